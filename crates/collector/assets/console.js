// Turnpike console: draws the usage charts of a tenant page with uPlot. The data is
// the page's `data-series` attribute: the same JSON as GET /v1/tenants/{t}/series.
(function () {
  "use strict";
  var colours = ["#2563eb", "#059669", "#7c3aed", "#d97706", "#0891b2"];

  function chart(parent, data, s, colour) {
    var box = document.createElement("div");
    box.className = "chart";
    box.setAttribute("data-meter", s.meter);
    parent.appendChild(box);
    var marks = s.values.map(function () { return null; });
    data.anomalies.forEach(function (a) {
      if (a.meter !== s.meter) { return; }
      var i = Math.round((Date.parse(a.bucket) / 1000 - s.starts[0]) / data.bucket_secs);
      if (i >= 0 && i < marks.length) { marks[i] = s.values[i]; }
    });
    var label = s.meter === "*" ? "all requests (rows)" : s.meter;
    var series = [{}, { label: label, stroke: colour, width: 1.5 }];
    var columns = [s.starts, s.values];
    if (s.denied) {
      series.push({ label: "denied", stroke: "#f97316", width: 1 });
      columns.push(s.denied);
    }
    series.push({
      label: "anomaly", stroke: "#dc2626", fill: "#dc2626", width: 0,
      paths: function () { return null; },
      points: { show: true, size: 10, stroke: "#dc2626", fill: "#dc2626" }
    });
    columns.push(marks);
    var opts = {
      title: label,
      width: Math.max(parent.clientWidth - 8, 480),
      height: 220,
      scales: { x: { time: true } },
      series: series,
      axes: [{}, { size: 70 }]
    };
    return new uPlot(opts, columns, box);
  }

  document.querySelectorAll("[data-series]").forEach(function (el) {
    var data = JSON.parse(el.getAttribute("data-series"));
    data.series.forEach(function (s, i) {
      chart(el, data, s, colours[i % colours.length]);
    });
  });
})();
