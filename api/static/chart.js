/* A tiny time-series line chart on a canvas: no dependencies. */
"use strict";

// Draw points [[t_ms, value|null], ...] between now - spanMs and now on canvas.
function drawSeries(canvas, points, spanMs, format) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width;
  const h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const now = Date.now();
  const from = now - spanMs;
  const shown = points.filter((p) => p[0] >= from && p[1] !== null && isFinite(p[1]));
  let max = 0;
  for (const p of shown) max = Math.max(max, p[1]);
  max = max > 0 ? max * 1.15 : 1;
  const pad = 14;
  const x = (t) => ((t - from) / spanMs) * w;
  const y = (v) => h - pad - (v / max) * (h - 2 * pad);
  ctx.strokeStyle = "#e5e7eb";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, y(0) + 0.5);
  ctx.lineTo(w, y(0) + 0.5);
  ctx.stroke();
  ctx.fillStyle = "#6b7280";
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(format(max / 1.15), 2, 10);
  ctx.fillText(`-${Math.round(spanMs / 60000)} min`, 2, h - 2);
  if (shown.length === 0) return;
  ctx.strokeStyle = "#2563eb";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  shown.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), y(p[1])) : ctx.moveTo(x(p[0]), y(p[1]))));
  ctx.stroke();
}

window.drawSeries = drawSeries;
