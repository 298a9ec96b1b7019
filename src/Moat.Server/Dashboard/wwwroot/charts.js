// Charts drawn on <canvas>: a sparkline, a line chart over time and a bar chart per day.
// Labels are drawn with fillText, so no data ever passes through HTML.

const colors = ['#1d4ed8', '#c2410c', '#15803d', '#7c3aed'];

function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || Number(canvas.getAttribute('width')) || 300;
  const hgt = canvas.clientHeight || Number(canvas.getAttribute('height')) || 100;
  canvas.width = Math.round(w * ratio);
  canvas.height = Math.round(hgt * ratio);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, hgt);
  ctx.font = '11px system-ui, sans-serif';
  return { ctx, w, h: hgt };
}

/** A tiny line of the last values, no axes. */
export function sparkline(canvas, values, color = colors[0]) {
  const { ctx, w, h } = prepare(canvas);
  const v = values.filter(x => Number.isFinite(x));
  if (v.length < 2) {
    ctx.fillStyle = '#656d76';
    ctx.fillText('no data', 2, h - 7);
    return;
  }
  const max = Math.max(...v, 1e-9);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  v.forEach((x, i) => {
    const px = (i / (v.length - 1)) * (w - 2) + 1;
    const py = h - 2 - (x / max) * (h - 4);
    if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
  });
  ctx.stroke();
}

/** Lines over time: series = [{label, points: [[ms, value]]}]; format(value) labels the axis. */
export function lineChart(canvas, series, format = String) {
  const { ctx, w, h } = prepare(canvas);
  const all = series.flatMap(s => s.points);
  const left = 64, bottom = 18, top = 16;
  if (all.length < 2) {
    ctx.fillStyle = '#656d76';
    ctx.fillText('no data', left, h / 2);
    return;
  }
  const t0 = Math.min(...all.map(p => p[0])), t1 = Math.max(...all.map(p => p[0]));
  const max = Math.max(...all.map(p => p[1]), 1e-9);
  const x = t => left + ((t - t0) / Math.max(t1 - t0, 1)) * (w - left - 8);
  const y = v => top + (1 - v / max) * (h - top - bottom);
  ctx.strokeStyle = '#d0d7de';
  ctx.fillStyle = '#656d76';
  ctx.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const yy = y(max * f);
    ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(w - 8, yy); ctx.stroke();
    ctx.fillText(format(max * f), 2, yy + 4);
  }
  ctx.fillText(new Date(t0).toISOString().slice(11, 19), left, h - 4);
  const end = new Date(t1).toISOString().slice(11, 19);
  ctx.fillText(end, w - 8 - ctx.measureText(end).width, h - 4);
  series.forEach((s, i) => {
    ctx.strokeStyle = colors[i % colors.length];
    ctx.lineWidth = 1.6;
    ctx.beginPath();
    s.points.forEach(([t, v], j) => { if (j === 0) ctx.moveTo(x(t), y(v)); else ctx.lineTo(x(t), y(v)); });
    ctx.stroke();
    ctx.fillStyle = colors[i % colors.length];
    ctx.fillText(s.label, left + 4 + i * 90, 11);
  });
}

/** Bars per category: bars = [{label, value}]. */
export function barChart(canvas, bars, format = String) {
  const { ctx, w, h } = prepare(canvas);
  const left = 64, bottom = 18, top = 8;
  if (!bars.length) {
    ctx.fillStyle = '#656d76';
    ctx.fillText('no data', left, h / 2);
    return;
  }
  const max = Math.max(...bars.map(b => b.value), 1e-9);
  const slot = (w - left - 8) / bars.length;
  ctx.fillStyle = '#656d76';
  ctx.strokeStyle = '#d0d7de';
  for (const f of [0, 0.5, 1]) {
    const yy = top + (1 - f) * (h - top - bottom);
    ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(w - 8, yy); ctx.stroke();
    ctx.fillText(format(max * f), 2, yy + 4);
  }
  const every = Math.ceil(bars.length / Math.max(1, Math.floor((w - left) / 48)));
  bars.forEach((b, i) => {
    const bh = (b.value / max) * (h - top - bottom);
    ctx.fillStyle = colors[0];
    ctx.fillRect(left + i * slot + slot * 0.15, h - bottom - bh, Math.max(1, slot * 0.7), bh);
    if (i % every === 0) {
      ctx.fillStyle = '#656d76';
      ctx.fillText(b.label, left + i * slot, h - 4);
    }
  });
}
