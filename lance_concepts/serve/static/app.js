// Concept autocomplete: fill the shared datalist from /api/concepts as the user types.
(function () {
  const list = document.getElementById("concept-list");
  let last = null;
  async function fill(prefix) {
    if (prefix === last) return; last = prefix;
    const r = await fetch("/api/concepts?prefix=" + encodeURIComponent(prefix));
    const names = await r.json();
    list.replaceChildren(...names.map(n => { const o = document.createElement("option"); o.value = n; return o; }));
  }
  document.querySelectorAll(".concept-input").forEach(el => el.addEventListener("input", () => fill(el.value)));
})();
