// The fleet overview's two charts (Chart.js, vendored under static/vendor/), drawn from the
// page's JSON block #overview-data (no inline script: the console's CSP is script-src 'self').
// Without this file or without Chart.js, the page still shows every figure, the map and tables.
"use strict";

(() => {
  const source = document.getElementById("overview-data");
  if (!source || typeof window.Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const Chart = window.Chart;

  // Okabe–Ito: told apart by people with any common colour-vision deficiency.
  const PALETTE = ["#D55E00", "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442", "#000000"];
  const ink = getComputedStyle(document.body).color;
  Chart.defaults.color = ink;
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.animation = false;

  // "2026-11-27" -> "27 Nov": short enough for a phone's axis.
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const labels = data.dates.map((d) => `${Number(d.slice(8, 10))} ${MONTHS[Number(d.slice(5, 7)) - 1]}`);
  const titles = (items) => (items.length ? data.dates[items[0].dataIndex] : "");

  const axes = (stacked) => ({
    x: { stacked, grid: { display: false }, ticks: { autoSkip: true, maxRotation: 0, autoSkipPadding: 12 } },
    y: { stacked, beginAtZero: true, ticks: { precision: 0 } },
  });

  new Chart(document.getElementById("chart-checkins"), {
    type: "bar",
    data: {
      labels,
      datasets: [{ label: "Check-ins", data: data.checkins, backgroundColor: "#2459c7" }],
    },
    options: {
      scales: axes(false),
      plugins: { legend: { display: false }, tooltip: { callbacks: { title: titles } } },
    },
  });

  const reasons = data.locks_by_reason.length
    ? data.locks_by_reason
    : [{ code: "none", label: "New locks", counts: data.locks }];
  new Chart(document.getElementById("chart-locks"), {
    type: "bar",
    data: {
      labels,
      datasets: reasons.map((r, i) => ({
        label: r.label,
        data: r.counts,
        backgroundColor: PALETTE[i % PALETTE.length],
      })),
    },
    options: {
      scales: axes(true),
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 12 } },
        tooltip: { mode: "index", intersect: false, callbacks: { title: titles } },
      },
    },
  });
  document.body.dataset.chartsReady = "true";
})();
