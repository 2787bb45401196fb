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

// The grid's total is its own request, so the first page never waits for a count.
(function () {
  const el = document.getElementById("count");
  if (!el || !el.dataset) return;
  if (el.dataset.where === undefined) return;
  const u = "/api/count?where=" + encodeURIComponent(el.dataset.where) + "&sort=" + encodeURIComponent(el.dataset.sort);
  fetch(u).then(r => r.json()).then(j => { el.textContent = j.error ? "?" : j.count.toLocaleString(); });
})();

// Inside a where condition: after "concept('" suggest vocabulary names; a click completes the name.
(function () {
  document.querySelectorAll(".concept-complete").forEach(el => {
    const box = document.createElement("div");
    box.className = "suggest";
    el.insertAdjacentElement("afterend", box);
    el.addEventListener("input", async () => {
      const head = el.value.slice(0, el.selectionStart);
      const m = head.match(/concept\('([^']*)$/);
      if (!m) { box.replaceChildren(); return; }
      const r = await fetch("/api/concepts?prefix=" + encodeURIComponent(m[1]));
      const names = await r.json();
      box.replaceChildren(...names.slice(0, 12).map(n => {
        const b = document.createElement("button");
        b.type = "button"; b.textContent = n; b.className = "suggestion";
        b.addEventListener("click", () => {
          const tail = el.value.slice(el.selectionStart).replace(/^[^']*'?\)?/, "");
          el.value = head.slice(0, head.length - m[1].length) + n + "')" + tail;
          box.replaceChildren(); el.focus();
        });
        return b;
      }));
    });
  });
})();
