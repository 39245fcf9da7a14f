/* Shared helpers of the dronedepth pages (no dependencies; works offline). */
(function () {
  "use strict";

  const STORAGE_KEY = "dronedepth.token";

  /**
   * The gateway token for this page: taken from ?token= (then removed from the
   * address bar and history entry) and kept in memory only. It is written to
   * localStorage only when the user ticked "remember on this device" (?remember=1).
   */
  function takeToken() {
    const url = new URL(window.location.href);
    let token = url.searchParams.get("token");
    const remember = url.searchParams.get("remember") === "1";
    if (token !== null || url.searchParams.has("remember")) {
      url.searchParams.delete("token");
      url.searchParams.delete("remember");
      window.history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    if (token !== null && remember) {
      try { window.localStorage.setItem(STORAGE_KEY, token); } catch (e) { /* storage disabled */ }
    }
    if (token === null) {
      try { token = window.localStorage.getItem(STORAGE_KEY); } catch (e) { token = null; }
    }
    return token;
  }

  function forgetToken() {
    try { window.localStorage.removeItem(STORAGE_KEY); } catch (e) { /* storage disabled */ }
  }

  function savedToken() {
    try { return window.localStorage.getItem(STORAGE_KEY); } catch (e) { return null; }
  }

  function authHeaders(token, extra) {
    const headers = Object.assign({}, extra || {});
    if (token) headers.Authorization = "Bearer " + token;
    return headers;
  }

  /** A page URL carrying the token (for links between the pages; stripped again on arrival). */
  function withToken(path, token) {
    if (!token) return path;
    return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  /** Turbo colormap (Google, Apache-2.0), polynomial approximation; t in [0, 1] → [r, g, b] 0..255. */
  function turbo(t) {
    const x = Math.min(1, Math.max(0, t));
    const x2 = x * x, x3 = x2 * x, x4 = x3 * x, x5 = x4 * x;
    const r = 0.13572138 + 4.6153926 * x - 42.66032258 * x2 + 132.13108234 * x3 - 152.94239396 * x4 + 59.28637943 * x5;
    const g = 0.09140261 + 2.19418839 * x + 4.84296658 * x2 - 14.18503333 * x3 + 4.27729857 * x4 + 2.82956604 * x5;
    const b = 0.1066733 + 12.64194608 * x - 60.58204836 * x2 + 110.36276771 * x3 - 89.90310912 * x4 + 27.34824973 * x5;
    const c = (v) => Math.round(255 * Math.min(1, Math.max(0, v)));
    return [c(r), c(g), c(b)];
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    const h = Math.floor(m / 60);
    return h + " h " + (m % 60) + " min";
  }

  function number(value, digits) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "—";
    return value.toLocaleString(undefined, { minimumFractionDigits: digits || 0, maximumFractionDigits: digits || 0 });
  }

  function clock(date) {
    return (date || new Date()).toLocaleTimeString(undefined, { hour12: false });
  }

  window.DD = { takeToken, forgetToken, savedToken, authHeaders, withToken, turbo, duration, number, clock };
})();
