// citycredit pages: sortable tables and the live scorecard. No inline scripts (the
// Content-Security-Policy forbids them), nothing loaded from elsewhere.
"use strict";

function cellValue(row, index, numeric) {
  const cell = row.children[index];
  const text = cell ? cell.textContent.trim() : "";
  if (!numeric) return text;
  const n = Number(text.split(/\s|\//)[0]);
  return Number.isNaN(n) ? -Infinity : n;
}

function makeSortable(table) {
  const heads = table.tHead ? Array.from(table.tHead.rows[0].cells) : [];
  heads.forEach((th, index) => {
    th.addEventListener("click", () => {
      const numeric = th.dataset.type === "num";
      const asc = !th.classList.contains("asc");
      heads.forEach((h) => h.classList.remove("asc", "desc"));
      th.classList.add(asc ? "asc" : "desc");
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = cellValue(a, index, numeric);
        const y = cellValue(b, index, numeric);
        const c = numeric ? x - y : String(x).localeCompare(String(y), "zh-CN");
        return asc ? c : -c;
      });
      rows.forEach((r) => body.appendChild(r));
    });
  });
}

function live(container) {
  const url = container.dataset.live;
  if (!url || typeof EventSource === "undefined") return;
  const state = document.getElementById("live-state");
  const source = new EventSource(url);
  source.addEventListener("open", () => state && state.classList.add("on"));
  source.addEventListener("error", () => state && state.classList.remove("on"));
  source.addEventListener("scorecard", (e) => {
    // The server renders and escapes the fragment; it holds no scripts.
    container.innerHTML = e.data;
    container.dataset.updates = String(Number(container.dataset.updates || "0") + 1);
  });
  source.addEventListener("signedout", () => {
    source.close();
    window.location.assign("/signin");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  const card = document.getElementById("scorecard");
  if (card) live(card);
});
