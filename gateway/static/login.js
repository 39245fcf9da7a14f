/* Token form: with a remembered token (opt-in), sign in again without asking. */
(function () {
  "use strict";
  const key = "dronedepth.token";
  const notice = document.getElementById("notice");
  let saved = null;
  try { saved = window.localStorage.getItem(key); } catch (e) { saved = null; }
  if (!saved) return;
  if (notice.classList.contains("error")) {
    // The remembered token was refused: forget it rather than retry it forever.
    try { window.localStorage.removeItem(key); } catch (e) { /* storage disabled */ }
    return;
  }
  const url = new URL(window.location.href);
  url.searchParams.set("token", saved);
  window.location.replace(url.toString());
})();
