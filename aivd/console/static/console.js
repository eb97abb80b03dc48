// The console's pages: the live view polls /api/live every second; the image page toggles its box layers.
// Hand-written and served from the package: no framework, nothing fetched from another origin.
"use strict";

function fixed(value, digits) { return Number(value).toFixed(digits); }

function rows(body, cells) {
  body.replaceChildren(...cells.map((values) => {
    const row = document.createElement("tr");
    for (const value of values) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    return row;
  }));
}

function showLive(root, live) {
  const field = (name) => root.querySelector(`[data-live="${name}"]`);
  field("throughput").textContent = fixed(live.throughput_per_s, 2);
  field("images").textContent = live.images;
  field("error_rate").textContent = fixed(live.error_rate * 100, 1);
  field("offload_ratio").textContent = fixed(live.offload_ratio * 100, 1);
  field("last_inspected_at").textContent = live.last_inspected_at || "none";
  field("at").textContent = live.at;
  rows(field("latency"), Object.entries(live.latency_ms).map(([stage, v]) => [stage, fixed(v.p50, 1), fixed(v.p95, 1), v.count]));
  rows(field("models"), Object.entries(live.models));
  rows(field("lines"), live.lines.length ? live.lines.map((line) => line.error ? [line.url, line.error]
    : [line.url, line.drift ? "DRIFT" : "no", fixed(line.cloud_disagreement || 0, 3), fixed(line.offload_ratio || 0, 3), line.model || "",
       Object.entries(line.updates).map(([action, count]) => `${action} ${count}`).join(" ")])
    : [["none given (aivd serve console --metrics URL)"]]);
  const { nodes = [], ...router } = live.runtime || {};
  rows(field("nodes"), nodes.length ? nodes.map((n) => [n.replica, n.node_class || "", fixed(n.cpu_idle * 100, 0), n.queue_len,
    fixed(n.bandwidth_bps / 1e6, 1), fixed(n.latency_s * 1000, 1), n.score === null ? "" : fixed(n.score, 3), fixed(n.age_s, 1)])
    : [["none reported"]]);
  field("runtime").textContent = live.runtime ? JSON.stringify(router, null, 2)
    : (live.runtime_error || "no runtime given (aivd serve console --runtime URL)");
}

function pollLive(root) {
  const tick = async () => {
    try {
      const answer = await fetch(root.dataset.source, { credentials: "same-origin" });
      if (answer.ok) showLive(root, await answer.json());
    } finally {
      setTimeout(tick, 1000);
    }
  };
  setTimeout(tick, 1000);
}

function layerToggles(panel, svg) {
  for (const box of panel.querySelectorAll("input[data-layer]")) {
    box.addEventListener("change", () => svg.classList.toggle(`hide-${box.dataset.layer}`, !box.checked));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) pollLive(live);
  const layers = document.getElementById("layers");
  const svg = document.getElementById("boxes");
  if (layers && svg) layerToggles(layers, svg);
});
