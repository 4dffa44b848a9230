// The console's only script of its own: draws the charts whose data a page carries as JSON beside its
// canvas (no inline script: the Content-Security-Policy allows scripts from this service only).
(function () {
  "use strict";
  function draw(root) {
    if (typeof window.Chart === "undefined") { return; }
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (canvas.dataset.drawn) { return; }
      var source = document.getElementById(canvas.id + "-data");
      if (!source) { return; }
      var data = JSON.parse(source.textContent);
      var config;
      if (canvas.dataset.chart === "balance") {
        config = {
          type: "line",
          data: { labels: data.labels, datasets: [{ label: "Available after", data: data.values, borderColor: "#0b57d0", stepped: true, fill: false }] },
          options: { animation: false, responsive: true, plugins: { legend: { display: false } }, scales: { x: { display: false }, y: { beginAtZero: true } } }
        };
      } else if (canvas.dataset.chart === "flows") {
        config = {
          type: "bar",
          data: { labels: data.labels, datasets: [{ label: "Moments (in +, out -)", data: data.values,
            backgroundColor: data.values.map(function (v) { return v < 0 ? "#b71c1c" : "#1b5e20"; }) }] },
          options: { animation: false, responsive: true, plugins: { legend: { display: false } } }
        };
      } else {
        config = {
          type: "bar",
          data: { labels: data.labels, datasets: [
            { label: "Stripe recorded", data: data.stripe, backgroundColor: "#0b57d0" },
            { label: "Ledger moved", data: data.ledger, backgroundColor: "#6d4c00" }
          ] },
          options: { animation: false, responsive: true, scales: { y: { beginAtZero: true } } }
        };
      }
      new window.Chart(canvas, config);
      canvas.dataset.drawn = "1";
    });
  }
  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSettle", function (event) { draw(event.target); });
})();
