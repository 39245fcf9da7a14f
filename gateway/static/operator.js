/* Operator page: polls /api/drones every second and keeps one card per connected drone. */
(function () {
  "use strict";

  const POLL_MS = 1000;
  const HIDDEN_POLL_MS = 5000;
  const token = DD.takeToken();
  const grid = document.getElementById("grid");
  const empty = document.getElementById("empty");
  const template = document.getElementById("drone-card");
  const cards = new Map(); // drone id -> {el, seq, url, loading}
  let timer = null;
  let inFlight = false;

  const stateClass = { connected: "ok", new: "warn", connecting: "warn", disconnected: "bad", failed: "bad", closed: "bad" };

  function signOut() {
    DD.forgetToken();
    window.location.replace("/");
  }

  function droneLink(event) {
    event.preventDefault();
    window.location.href = DD.withToken("/drone", token);
  }

  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("open-drone").addEventListener("click", droneLink);
  document.getElementById("empty-drone-link").addEventListener("click", droneLink);

  function setText(root, selector, text) {
    const el = root.querySelector(selector);
    if (el.textContent !== text) el.textContent = text;
    return el;
  }

  function setGateway(gateway, ok) {
    const dot = document.getElementById("depth-dot");
    const text = document.getElementById("depth-text");
    if (!ok) {
      dot.className = "dot bad";
      text.textContent = "Gateway unreachable, retrying…";
      return;
    }
    if (gateway.depth_available) {
      dot.className = "dot ok";
      text.textContent = "Depth ready" + (gateway.depth_kind ? " · " + gateway.depth_kind : "");
    } else {
      dot.className = "dot bad";
      text.textContent = "Depth server unavailable";
    }
    document.getElementById("drone-count").textContent = String(gateway.sessions);
    document.getElementById("drone-max").textContent = String(gateway.max_drones);
  }

  function newCard(id) {
    const el = template.content.firstElementChild.cloneNode(true);
    el.dataset.droneId = id;
    el.querySelector(".drone-id").textContent = id;
    el.querySelector(".drone-id").title = id;
    const card = { el, seq: null, url: null, loading: false };
    const img = el.querySelector(".preview-img");
    img.alt = "Depth preview of " + id;
    img.addEventListener("load", () => {
      img.hidden = false;
      el.querySelector(".preview-empty").hidden = true;
    });
    return card;
  }

  function setValue(root, selector, text, unit, sub) {
    const dd = root.querySelector(selector);
    const parts = [text];
    if (unit && text !== "—") {
      const small = document.createElement("small");
      small.textContent = unit;
      parts.push(small);
    }
    if (sub) {
      const span = document.createElement("span");
      span.className = "sub";
      span.textContent = sub;
      parts.push(span);
    }
    dd.replaceChildren(...parts);
    return dd;
  }

  const SCALE_SOURCES = { model: "model", ground: "from ground", anchors: "from anchors" };

  // The depth badge says what the latest result's depth is (docs/scale.md): metres only when they are.
  function depthBadge(depthKind, scale) {
    const fit = scale && scale.scale;
    const check = scale && scale.check;
    if (depthKind === "relative") {
      const why = scale && scale.mode === "auto" ? " (no trusted scale from the ground or anchors yet)" : "";
      return { text: "relative depth: not metres", title: "Relative depth: scaled by an unknown factor, not metres" + why };
    }
    const source = fit ? fit.source : "model";
    const parts = ["metric (" + (SCALE_SOURCES[source] || source) + ")"];
    const titles = [source === "model" ? "Depth in metres, the model's own" : "Depth in metres recovered " + parts[0].slice(8, -1)];
    if (source !== "model") {
      parts.push(DD.number(fit.confidence * 100) + " %");
      titles.push("confidence " + DD.number(fit.confidence, 2) + " from " + DD.number(fit.anchors_used) + " anchors");
    }
    if (check) {
      parts.push("scale check ×" + DD.number(check.ratio, 2));
      titles.push("anchors' depth ÷ the model's depth = " + DD.number(check.ratio, 3) + " over " + DD.number(check.anchors_used) + " anchors");
    }
    return { text: parts.join(" · "), title: titles.join("; ") };
  }

  function ms(value) {
    return value === null || value === undefined ? "—" : DD.number(value, value < 10 ? 1 : 0);
  }

  function updateCard(card, id, d, previewsOn) {
    const el = card.el;
    const pill = setText(el, ".state", d.state);
    pill.className = "pill state " + (stateClass[d.state] || "");

    const rate = d.result_rate === null ? "—" : DD.number(d.result_rate, 1);
    const advised = d.advised_fps === null || d.advised_fps === undefined ? null : d.advised_fps;
    const rateCell = setValue(el, ".rate", rate, null, advised === null ? null : "asked ≤ " + DD.number(advised, 1) + " fps");
    rateCell.title = advised === null ? "" :
      "the gateway asks this drone to send at most " + DD.number(advised, 1) + " frames/s ('frame_rate'): " +
      "it cannot process more of them, and frames it would drop still cost the drone's encoder and radio";
    setValue(el, ".p50", ms(d.latency_ms.p50), "ms", null);
    setValue(el, ".p95", ms(d.latency_ms.p95), "ms", null);
    setValue(el, ".received", DD.number(d.frames.received), null, null);
    setValue(el, ".processed", DD.number(d.frames.processed), null, null);
    const reasons = Object.entries(d.dropped || {}).sort((a, b) => b[1] - a[1]);
    const why = reasons.map(([reason, n]) => DD.number(n) + " " + reason.replace(/_/g, " ")).join(", ");
    const dropped = setValue(el, ".dropped", DD.number(d.frames.dropped), null, why || null);
    dropped.title = "superseded: a newer frame arrived before this one was processed (newest frame wins)";

    updatePose(el, d.pose);
    updateObstacle(el, d.nearest_obstacle);

    const kind = el.querySelector(".kind");
    if (d.depth_kind) {
      const badge = depthBadge(d.depth_kind, d.scale);
      kind.hidden = false;
      kind.textContent = badge.text;
      kind.className = "badge kind " + d.depth_kind;
      kind.title = badge.title;
    } else {
      kind.hidden = true;
    }

    const camera = d.camera
      ? d.camera.width + "×" + d.camera.height + " · fx " + DD.number(d.camera.fx) + " px"
      : "no camera message yet";
    const frame = d.frame && d.camera && (d.frame.width !== d.camera.width || d.frame.height !== d.camera.height)
      ? " · frames " + d.frame.width + "×" + d.frame.height
      : "";
    setText(el, ".camera", camera + frame);
    const since = setText(el, ".since", "connected " + DD.duration(d.connected_s));
    since.title = "since " + new Date(d.connected_since).toLocaleString() + " from " + d.remote;

    const age = el.querySelector(".age");
    const empty = el.querySelector(".preview-empty");
    if (!previewsOn) {
      empty.textContent = "Previews are off on this gateway";
    } else if (d.preview) {
      age.hidden = d.preview.age_s < 3;
      age.textContent = "preview " + DD.duration(d.preview.age_s) + " old";
      if (d.preview.seq !== card.seq && !card.loading) loadPreview(card, id, d.preview.seq);
    } else {
      empty.textContent = d.camera ? "Waiting for depth…" : "Waiting for the camera message…";
    }
  }

  const poseText = { none: "none", matched: "matched", lost: "lost" };
  const poseClass = { none: "stale", matched: "ok", lost: "bad" };

  function updatePose(el, pose) {
    const sub = pose.status === "none"
      ? "no pose received"
      : pose.match + (pose.frame_id ? " · " + pose.frame_id : "");
    const dd = setValue(el, ".pose", poseText[pose.status] || pose.status, null, sub);
    dd.className = "pose " + (poseClass[pose.status] || "");
    dd.dataset.status = pose.status;
    dd.title = DD.number(pose.frames_with_pose) + " frames with a pose, " + DD.number(pose.received) + " poses received";
  }

  function bearing(deg) {
    // Body FRD: 0 ahead, positive to the right.
    if (Math.abs(deg) < 0.5) return "ahead";
    return DD.number(Math.abs(deg), 0) + "° " + (deg > 0 ? "right" : "left");
  }

  function updateObstacle(el, o) {
    let dd;
    if (!o) {
      dd = setValue(el, ".obstacle", "—", null, "no obstacle profile");
      dd.className = "obstacle";
      dd.dataset.stale = "true";
      return;
    }
    const age = (o.age_s < 60 ? DD.number(o.age_s, 1) + " s" : DD.duration(o.age_s)) + " ago";
    const where = o.range_m === null ? "within " + DD.number(o.max_range_m, 0) + " m" : bearing(o.bearing_deg);
    const sub = (o.stale ? "stale · " : where + " · ") + age;
    if (o.range_m === null) {
      dd = setValue(el, ".obstacle", "clear", null, sub);
    } else {
      dd = setValue(el, ".obstacle", DD.number(o.range_m, 1), "m", sub);
    }
    dd.className = "obstacle " + (o.stale ? "stale" : o.range_m !== null && o.range_m < 2 ? "bad" : "ok");
    dd.dataset.stale = String(o.stale);
    dd.title = (o.gravity_aligned ? "gravity-aligned" : "body frame: no attitude known") +
      "; stale once its frame is over 0.5 s old (the drone's default --obstacle-max-age)";
  }

  async function loadPreview(card, id, seq) {
    card.loading = true;
    try {
      const reply = await fetch("/api/drones/" + encodeURIComponent(id) + "/preview.jpg", {
        headers: DD.authHeaders(token),
        cache: "no-store",
      });
      if (!reply.ok) return;
      const blob = await reply.blob();
      if (!cards.has(id)) return;
      const url = URL.createObjectURL(blob);
      const img = card.el.querySelector(".preview-img");
      const old = card.url;
      img.src = url;
      card.url = url;
      card.seq = seq;
      if (old) window.setTimeout(() => URL.revokeObjectURL(old), 2000);
    } catch (e) {
      /* retried on the next poll */
    } finally {
      card.loading = false;
    }
  }

  // World map panel (gateway --map): the top-down occupancy PNG, refreshed every MAP_REFRESH_MS; hidden when off.
  const MAP_REFRESH_MS = 2000;
  const mapPanel = { el: null, img: null, note: null, url: null, loadedAt: 0, loading: false };

  function mapElements() {
    if (!mapPanel.el) {
      const el = document.createElement("section");
      el.className = "card map-panel";
      el.id = "map-panel";
      el.innerHTML = '<header class="card-head"><h2>World map</h2><span class="pill" id="map-frame">map</span></header>' +
        '<div class="map-view"><div class="preview-empty" id="map-note">Nothing fused yet</div>' +
        '<img id="map-img" alt="Top-down occupancy of the world map (north up; brighter is higher)" hidden></div>' +
        '<footer class="card-foot"><span id="map-scale"></span><span>north up · brighter = higher</span></footer>';
      grid.parentNode.insertBefore(el, grid);
      mapPanel.el = el;
      mapPanel.img = el.querySelector("#map-img");
      mapPanel.note = el.querySelector("#map-note");
    }
    return mapPanel;
  }

  async function refreshMap(on) {
    if (!on) {
      if (mapPanel.el) mapPanel.el.hidden = true;
      return;
    }
    const panel = mapElements();
    panel.el.hidden = false;
    if (panel.loading || Date.now() - panel.loadedAt < MAP_REFRESH_MS) return;
    panel.loading = true;
    try {
      const reply = await fetch("/api/map.png", { headers: DD.authHeaders(token), cache: "no-store" });
      panel.loadedAt = Date.now();
      if (reply.status === 404) {
        panel.img.hidden = true;
        panel.note.textContent = "Nothing fused yet";
        panel.note.hidden = false;
        return;
      }
      if (!reply.ok) throw new Error("HTTP " + reply.status);
      const url = URL.createObjectURL(await reply.blob());
      panel.img.onload = () => {
        if (panel.url) URL.revokeObjectURL(panel.url);
        panel.url = url;
      };
      panel.img.src = url;
      panel.img.hidden = false;
      panel.note.hidden = true;
      setText(panel.el, "#map-frame", reply.headers.get("X-Map-Frame") || "map");
      setText(panel.el, "#map-scale", (reply.headers.get("X-Map-Cell-M") || "?") + " m per pixel");
    } catch (e) {
      panel.img.hidden = true;
      panel.note.textContent = "Map unavailable";
      panel.note.hidden = false;
    } finally {
      panel.loading = false;
    }
  }

  function render(data) {
    setGateway(data.gateway, true);
    refreshMap(Boolean(data.gateway.map));
    const ids = Object.keys(data.drones);
    for (const [id, card] of cards) {
      if (!(id in data.drones)) {
        card.el.remove();
        if (card.url) URL.revokeObjectURL(card.url);
        cards.delete(id);
      }
    }
    for (const id of ids) {
      let card = cards.get(id);
      if (!card) {
        card = newCard(id);
        cards.set(id, card);
        grid.appendChild(card.el);
      }
      updateCard(card, id, data.drones[id], data.gateway.previews);
    }
    empty.hidden = ids.length > 0;
    document.getElementById("updated").textContent = "Updated " + DD.clock();
  }

  async function poll() {
    if (inFlight) return;
    inFlight = true;
    try {
      const reply = await fetch("/api/drones", { headers: DD.authHeaders(token), cache: "no-store" });
      if (reply.status === 401) {
        DD.forgetToken();
        window.location.replace("/");
        return;
      }
      if (!reply.ok) throw new Error("HTTP " + reply.status);
      render(await reply.json());
    } catch (e) {
      setGateway(null, false);
    } finally {
      inFlight = false;
      schedule();
    }
  }

  function schedule() {
    window.clearTimeout(timer);
    timer = window.setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      window.clearTimeout(timer);
      poll();
    }
  });

  window.dronedepth = { cards };
  poll();
})();
