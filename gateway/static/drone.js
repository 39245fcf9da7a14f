/*
 * Browser drone: this device's camera streams to the gateway with the same protocol as
 * `dronedepth drone` (docs/protocol.md), and the keypoints that come back are drawn over the video.
 *
 *   RTCPeerConnection (no ICE servers) + data channel "dronedepth" created here + the camera track
 *   → offer, wait for ICE gathering to complete (no trickle) → POST /offer with the bearer token
 *   → apply the answer → on channel open send {"type": "camera", width, height, fx, fy, cx, cy}
 *   → receive {"type": "keypoints", pixels, points, ...} and {"type": "error", code, message}.
 *
 * window.dronedepth.stats exposes counters for tests and the curious.
 */
(function () {
  "use strict";

  const LABEL = "dronedepth";
  const ICE_GATHER_TIMEOUT_MS = 5000;
  const RATE_WINDOW_MS = 3000;
  const STALE_MS = 2000;
  const SETTINGS_KEY = "dronedepth.drone-settings"; // camera settings only, never the token

  const token = DD.takeToken();
  const $ = (id) => document.getElementById(id);
  const video = $("video");
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");

  const stats = {
    state: "idle",
    droneId: null,
    camera: null,
    resultsReceived: 0,
    resultsPerSecond: 0,
    lastKeypoints: 0,
    keypointsDrawn: 0,
    depthKind: null,
    latencyMs: null,
    maxFramerate: null, // the gateway's frame_rate advice applied to the encoder (null: no limit)
    errors: [],
  };
  window.dronedepth = { stats, start: () => start(), stop: () => stop("stopped") };

  let pc = null;
  let channel = null;
  let stream = null;
  let track = null;
  let sender = null; // the video RTCRtpSender: the gateway's frame_rate advice caps its encoder
  let camera = null; // the camera message last sent
  let arrivals = [];
  let lastMessage = null;
  let lastResultAt = 0;
  let housekeeping = null;
  let wakeLock = null;

  // ------------------------------------------------------------------ UI helpers

  function log(text, kind) {
    const item = document.createElement("li");
    item.className = kind || "info";
    const time = document.createElement("time");
    time.textContent = DD.clock();
    item.append(time, text);
    const list = $("log");
    list.prepend(item);
    while (list.children.length > 30) list.lastElementChild.remove();
  }

  function setState(state, text, tone) {
    stats.state = state;
    $("state-text").textContent = text;
    $("state-dot").className = "dot " + (tone || "");
  }

  function setRunning(running) {
    $("settings").disabled = running;
    $("start").hidden = running;
    $("stop").hidden = !running;
    $("placeholder").hidden = running;
  }

  function mode() {
    return document.querySelector('input[name="mode"]:checked').value;
  }

  function showMode() {
    $("fov-fields").hidden = mode() !== "fov";
    $("matrix-fields").hidden = mode() !== "matrix";
  }

  // ------------------------------------------------------------------ settings (remembered; no secrets)

  const FIELDS = ["drone-id-input", "facing", "resolution", "fov-preset", "fov", "fx", "fy", "cx", "cy", "cal-w", "cal-h"];

  function saveSettings() {
    const values = { mode: mode() };
    for (const id of FIELDS) values[id] = $(id).value;
    try { window.localStorage.setItem(SETTINGS_KEY, JSON.stringify(values)); } catch (e) { /* storage disabled */ }
  }

  function loadSettings() {
    let values = null;
    try { values = JSON.parse(window.localStorage.getItem(SETTINGS_KEY) || "null"); } catch (e) { values = null; }
    if (values) {
      for (const id of FIELDS) if (typeof values[id] === "string") $(id).value = values[id];
      const radio = document.querySelector('input[name="mode"][value="' + values.mode + '"]');
      if (radio) radio.checked = true;
    }
    // Query parameters win (handy for links and tests): ?fov=, ?drone=, ?fx=&fy=&cx=&cy=.
    const query = new URLSearchParams(window.location.search);
    if (query.has("drone")) $("drone-id-input").value = query.get("drone");
    if (query.has("fov")) {
      $("fov").value = query.get("fov");
      $("fov-preset").value = "";
      document.querySelector('input[name="mode"][value="fov"]').checked = true;
    }
    if (["fx", "fy", "cx", "cy"].every((k) => query.has(k))) {
      for (const k of ["fx", "fy", "cx", "cy"]) $(k).value = query.get(k);
      document.querySelector('input[name="mode"][value="matrix"]').checked = true;
    }
    showMode();
  }

  // ------------------------------------------------------------------ intrinsics

  /** The camera message for frames of width × height from the form; throws Error with a readable message. */
  function cameraMessage(width, height) {
    let fx, fy, cx, cy;
    if (mode() === "fov") {
      const degrees = Number($("fov").value);
      if (!(degrees >= 10 && degrees <= 150)) throw new Error("the field of view must be between 10° and 150°");
      // The FOV is across the image's long side, so it holds in portrait and landscape alike.
      fx = fy = (Math.max(width, height) / 2) / Math.tan((degrees * Math.PI) / 360);
      cx = (width - 1) / 2;
      cy = (height - 1) / 2;
    } else {
      [fx, fy, cx, cy] = ["fx", "fy", "cx", "cy"].map((k) => Number($(k).value));
      if (![fx, fy, cx, cy].every(Number.isFinite) || $("fx").value === "" || $("cx").value === "") {
        throw new Error("give fx, fy, cx and cy in pixels");
      }
      const calW = Number($("cal-w").value) || width;
      const calH = Number($("cal-h").value) || height;
      if (calW !== width || calH !== height) {
        if (Math.abs(calW / calH / (width / height) - 1) > 0.01) {
          throw new Error(
            "the calibration is for " + calW + "×" + calH + " but the camera gives " + width + "×" + height +
            " (another aspect ratio): calibrate at this resolution"
          );
        }
        // Same aspect ratio: rescale (pixel centres at integer coordinates, as OpenCV's resize).
        const sx = width / calW, sy = height / calH;
        fx *= sx; fy *= sy;
        cx = (cx + 0.5) * sx - 0.5;
        cy = (cy + 0.5) * sy - 0.5;
      }
      if (!(fx > 0 && fy > 0)) throw new Error("focal lengths must be positive");
      if (!(cx >= 0 && cx <= width && cy >= 0 && cy <= height)) {
        throw new Error("the principal point (" + cx + ", " + cy + ") lies outside the " + width + "×" + height + " image");
      }
    }
    return { type: "camera", width, height, fx, fy, cx, cy, model: "pinhole" };
  }

  function sendCamera() {
    const settings = track.getSettings();
    const message = cameraMessage(settings.width, settings.height);
    channel.send(JSON.stringify(message));
    camera = message;
    stats.camera = message;
    log(
      "Camera " + message.width + "×" + message.height + ", fx " + message.fx.toFixed(1) +
      " px" + (mode() === "fov" ? " (from a " + $("fov").value + "° field of view: approximate)" : ""),
      "ok"
    );
  }

  // ------------------------------------------------------------------ WebRTC

  function iceGatheringComplete(peer) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (peer.iceGatheringState !== "complete") return;
        peer.removeEventListener("icegatheringstatechange", done);
        window.clearTimeout(timer);
        resolve();
      };
      const timer = window.setTimeout(() => {
        peer.removeEventListener("icegatheringstatechange", done);
        resolve(); // send what was gathered so far
      }, ICE_GATHER_TIMEOUT_MS);
      peer.addEventListener("icegatheringstatechange", done);
    });
  }

  async function openCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error(
        "this page cannot use the camera: browsers allow it only on https:// or http://localhost " +
        "(see docs/web.md for HTTPS)"
      );
    }
    const [width, height] = $("resolution").value.split("x").map(Number);
    stream = await navigator.mediaDevices.getUserMedia({
      audio: false,
      video: {
        width: { ideal: width },
        height: { ideal: height },
        frameRate: { ideal: 15, max: 30 },
        facingMode: { ideal: $("facing").value },
      },
    });
    track = stream.getVideoTracks()[0];
    // "detail": under load the encoder lowers the frame rate rather than the resolution.
    if ("contentHint" in track) track.contentHint = "detail";
    track.addEventListener("ended", () => stop("the camera stopped"));
    video.srcObject = stream;
    await video.play().catch(() => undefined);
  }

  async function connect() {
    pc = new RTCPeerConnection({ iceServers: [] });
    const ours = pc.createDataChannel(LABEL); // ordered and reliable, as the protocol wants
    channel = ours;
    channel.addEventListener("open", () => {
      if (channel !== ours) return;
      try {
        sendCamera();
        setState("streaming", "Streaming", "ok");
      } catch (e) {
        log("Intrinsics: " + e.message, "error");
        stop("bad intrinsics");
      }
    });
    channel.addEventListener("message", (event) => {
      if (channel === ours) onMessage(event.data); // nothing from a stopped session
    });
    channel.addEventListener("close", () => {
      if (channel === ours) stop("the gateway closed the session");
    });
    sender = pc.addTrack(track, stream);
    pc.addEventListener("connectionstatechange", () => {
      if (!pc) return;
      const state = pc.connectionState;
      if (state === "connected") log("Connected to the gateway", "ok");
      else if (state === "disconnected") setState("disconnected", "Connection interrupted…", "warn");
      else if (state === "failed") {
        log(
          "The WebRTC connection failed: this device must reach the gateway's address directly " +
          "(same network, no blocking firewall), or the gateway needs a TURN server.",
          "error"
        );
        stop("connection failed");
      }
    });

    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc);
    try {
      const parameters = sender.getParameters();
      if (parameters.encodings && parameters.encodings.length) {
        parameters.encodings[0].maxBitrate = 2500000;
        await sender.setParameters(parameters);
      }
    } catch (e) { /* optional */ }

    const headers = DD.authHeaders(token, { "Content-Type": "application/json" });
    const droneId = $("drone-id-input").value.trim();
    if (droneId) headers["X-Drone-Id"] = droneId;
    const reply = await fetch("/offer", {
      method: "POST",
      headers,
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
      cache: "no-store",
    });
    let body = null;
    try { body = await reply.json(); } catch (e) { body = null; }
    if (!reply.ok) {
      const why = body && body.message ? body.message : "HTTP " + reply.status;
      throw new Error("the gateway refused the offer (" + (body && body.error ? body.error : reply.status) + "): " + why);
    }
    stats.droneId = body.drone_id;
    $("drone-id").textContent = body.drone_id;
    $("drone-chip").hidden = false;
    await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    log("Offer accepted: drone id " + body.drone_id, "ok");
  }

  async function start() {
    if (pc || stats.state === "starting") return;
    const droneId = $("drone-id-input").value.trim();
    if (droneId && !/^[A-Za-z0-9_-]{1,64}$/.test(droneId)) {
      log("A drone id is 1 to 64 letters, digits, '_' or '-'.", "error");
      return;
    }
    try {
      cameraMessage(640, 480); // validate the form before asking for the camera
    } catch (e) {
      log("Intrinsics: " + e.message, "error");
      return;
    }
    saveSettings();
    setRunning(true);
    setState("starting", "Opening the camera…", "warn");
    resetStats();
    try {
      await openCamera();
      setState("starting", "Connecting…", "warn");
      await connect();
      requestWakeLock();
      housekeeping = window.setInterval(tick, 500);
    } catch (e) {
      const text = e && e.name === "NotAllowedError"
        ? "Camera permission was denied."
        : (e && e.message) || String(e);
      log(text, "error");
      stop("failed to start");
    }
  }

  function stop(reason) {
    const wasRunning = pc !== null || stream !== null;
    const peer = pc;
    pc = null;
    if (channel) {
      try { channel.close(); } catch (e) { /* already closed */ }
    }
    channel = null;
    if (peer) peer.close();
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    track = null;
    sender = null;
    camera = null;
    video.srcObject = null;
    window.clearInterval(housekeeping);
    housekeeping = null;
    if (wakeLock) wakeLock.release().catch(() => undefined);
    wakeLock = null;
    arrivals = [];
    lastMessage = null;
    Object.assign(stats, { lastKeypoints: 0, depthKind: null, latencyMs: null });
    updateStatsbar();
    $("legend").hidden = true;
    $("drone-chip").hidden = true;
    clearOverlay();
    setRunning(false);
    setState(reason === "stopped" ? "idle" : "stopped", reason === "stopped" ? "Idle" : "Stopped: " + reason,
      reason === "stopped" ? "" : "bad");
    if (wasRunning && reason !== "stopped") log("Stopped: " + reason, "info");
  }

  async function requestWakeLock() {
    try {
      if (navigator.wakeLock) wakeLock = await navigator.wakeLock.request("screen");
    } catch (e) { /* not supported or not allowed: the screen may sleep */ }
  }

  // ------------------------------------------------------------------ results

  function resetStats() {
    Object.assign(stats, {
      droneId: null, camera: null, resultsReceived: 0, resultsPerSecond: 0, lastKeypoints: 0,
      keypointsDrawn: 0, depthKind: null, latencyMs: null, maxFramerate: null, errors: [],
    });
    arrivals = [];
    lastMessage = null;
    updateStatsbar();
  }

  function onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (message.type === "keypoints") {
      onKeypoints(message);
    } else if (message.type === "frame_rate") {
      onFrameRate(message.max_fps);
    } else if (message.type === "error") {
      stats.errors.push({ code: message.code, message: message.message });
      log(message.code + ": " + message.message, message.code === "inference_resumed" ? "ok" : "error");
    }
  }

  // The gateway cannot process more of this drone's frames: the encoder sends no more than it asks
  // (RTCRtpEncodingParameters.maxFramerate), sparing the uplink and the gateway's decoder.
  async function onFrameRate(maxFps) {
    const ours = sender;
    if (!ours || (maxFps !== null && !(Number.isFinite(maxFps) && maxFps > 0))) return;
    try {
      const parameters = ours.getParameters();
      if (!parameters.encodings || !parameters.encodings.length) return;
      if (maxFps === null) delete parameters.encodings[0].maxFramerate;
      else parameters.encodings[0].maxFramerate = maxFps;
      await ours.setParameters(parameters);
      if (ours !== sender) return; // stopped meanwhile
      const applied = ours.getParameters().encodings[0].maxFramerate;
      stats.maxFramerate = applied === undefined ? null : applied;
      log(maxFps === null ? "The gateway lifted its frame-rate limit" : "The gateway asks for at most " + maxFps + " fps", "info");
    } catch (e) {
      log("Frame-rate advice not applied: " + ((e && e.message) || e), "error");
    }
  }

  function onKeypoints(message) {
    const now = performance.now();
    arrivals.push(now);
    lastResultAt = now;
    lastMessage = message;
    stats.resultsReceived += 1;
    stats.lastKeypoints = message.points.length;
    stats.depthKind = message.depth_kind;
    stats.latencyMs = message.timing && Number.isFinite(message.timing.total) ? message.timing.total : null;
    draw(message);
    updateStatsbar();
  }

  function tick() {
    const now = performance.now();
    if (lastMessage && now - lastResultAt > STALE_MS) {
      lastMessage = null;
      clearOverlay();
    }
    updateStatsbar();
    // A phone turned sideways swaps the track's width and height: tell the gateway.
    if (track && channel && channel.readyState === "open" && camera) {
      const settings = track.getSettings();
      if (settings.width && settings.height && (settings.width !== camera.width || settings.height !== camera.height)) {
        try { sendCamera(); } catch (e) { log("Intrinsics: " + e.message, "error"); }
      }
    }
  }

  function updateStatsbar() {
    const now = performance.now();
    arrivals = arrivals.filter((t) => now - t <= RATE_WINDOW_MS);
    const first = arrivals.length ? arrivals[0] : now;
    const span = Math.max(1000, Math.min(RATE_WINDOW_MS, now - first)) / 1000;
    stats.resultsPerSecond = arrivals.length / span;
    $("stat-rate").textContent = stats.resultsPerSecond.toFixed(1);
    $("stat-count").textContent = String(stats.lastKeypoints);
    $("stat-count-label").textContent = stats.lastKeypoints === 1 ? "keypoint" : "keypoints";
    $("stat-kind").textContent = stats.depthKind === "relative" ? "relative (not metres)" : stats.depthKind || "—";
    $("stat-latency").textContent = stats.latencyMs === null ? "—" : String(Math.round(stats.latencyMs));
    $("relative-banner").hidden = stats.depthKind !== "relative";
  }

  // ------------------------------------------------------------------ drawing

  /** Where the video's picture lies inside the element (object-fit: contain), in CSS pixels. */
  function pictureRect() {
    const w = video.clientWidth, h = video.clientHeight;
    const vw = video.videoWidth || w, vh = video.videoHeight || h;
    const scale = Math.min(w / vw, h / vh);
    return { x: (w - vw * scale) / 2, y: (h - vh * scale) / 2, w: vw * scale, h: vh * scale };
  }

  function sizeCanvas() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(canvas.clientWidth * dpr), h = Math.round(canvas.clientHeight * dpr);
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  function clearOverlay() {
    sizeCanvas();
    ctx.clearRect(0, 0, canvas.width, canvas.height);
  }

  function depthOf(point, axes) {
    return axes === "opengl" ? -point[2] : point[2]; // optical and seed: z forward; opengl: z backward
  }

  function robustRange(values) {
    const sorted = values.filter((v) => Number.isFinite(v) && v > 0).sort((a, b) => a - b);
    if (!sorted.length) return null;
    const at = (q) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))];
    const lo = at(0.05), hi = at(0.95);
    return { lo, hi: hi > lo ? hi : lo + 1e-6 };
  }

  function draw(message, redraw) {
    sizeCanvas();
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const n = Math.min(message.points.length, message.pixels.length);
    const depths = message.points.slice(0, n).map((p) => depthOf(p, message.axes));
    const range = robustRange(depths);
    updateLegend(range, message.depth_kind);
    if (!n || !range || !message.width || !message.height) return;
    const rect = pictureRect();
    const sx = rect.w / message.width, sy = rect.h / message.height;
    const radius = Math.max(2.5, Math.min(5, rect.w / 220));
    ctx.lineWidth = 1.25;
    ctx.strokeStyle = "rgba(0, 0, 0, 0.75)";
    let drawn = 0;
    for (let i = 0; i < n; i++) {
      const d = depths[i];
      if (!(Number.isFinite(d) && d > 0)) continue;
      const [u, v] = message.pixels[i];
      const x = rect.x + (u + 0.5) * sx, y = rect.y + (v + 0.5) * sy;
      const t = (d - range.lo) / (range.hi - range.lo); // 0 near .. 1 far
      // Near warm, far cool; the colormap's dark ends are left out so every dot stands out on video.
      const [r, g, b] = DD.turbo(0.92 - 0.82 * Math.min(1, Math.max(0, t)));
      ctx.fillStyle = "rgb(" + r + "," + g + "," + b + ")";
      ctx.beginPath();
      ctx.arc(x, y, radius, 0, 2 * Math.PI);
      ctx.fill();
      ctx.stroke();
      drawn += 1;
    }
    if (!redraw) stats.keypointsDrawn += drawn;
  }

  function updateLegend(range, kind) {
    const legend = $("legend");
    if (!range) {
      legend.hidden = true;
      return;
    }
    legend.hidden = false;
    if (kind === "metric") {
      $("legend-near").textContent = range.lo.toFixed(1) + " m";
      $("legend-far").textContent = range.hi.toFixed(1) + " m";
    } else {
      $("legend-near").textContent = "near";
      $("legend-far").textContent = "far (relative)";
    }
  }

  // ------------------------------------------------------------------ wiring

  $("setup").addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  $("stop").addEventListener("click", () => stop("stopped"));
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", showMode);
  $("fov-preset").addEventListener("change", () => {
    if ($("fov-preset").value) $("fov").value = $("fov-preset").value;
  });
  $("fov").addEventListener("input", () => {
    const match = Array.from($("fov-preset").options).find((o) => o.value === $("fov").value);
    $("fov-preset").value = match ? match.value : "";
  });
  $("open-operator").addEventListener("click", (event) => {
    event.preventDefault();
    window.location.href = DD.withToken("/", token);
  });
  window.addEventListener("resize", () => {
    if (lastMessage) draw(lastMessage, true);
    else clearOverlay();
  });
  window.addEventListener("pagehide", () => stop("stopped"));
  const fitStage = () => {
    // The stage takes the camera's shape (a phone held upright gives a portrait picture).
    if (video.videoWidth && video.videoHeight) $("video-wrap").style.aspectRatio = video.videoWidth + " / " + video.videoHeight;
  };
  video.addEventListener("loadedmetadata", fitStage);
  video.addEventListener("resize", fitStage);

  loadSettings();
  setState("idle", "Idle", "");
  if (new URLSearchParams(window.location.search).get("autostart") === "1") start();
})();
