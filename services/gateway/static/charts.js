// Time-series charts on <canvas>, for the dashboard: lines and stacked bars over a time
// axis, with a legend, value ticks and a read-out of the values under the pointer.
// Plain JavaScript, no dependencies. Colours come from the page's CSS variables, so the
// charts follow the light or dark scheme.
"use strict";

const Charts = (() => {
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
    "#b07aa1", "#ff9da7", "#9c755f", "#8cd17d"];

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // A "nice" step (1, 2 or 5 times a power of ten) giving about `count` ticks up to `max`
  function niceStep(max, count) {
    const raw = max / Math.max(1, count);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const factor of [1, 2, 5, 10]) {
      if (factor * power >= raw) return factor * power;
    }
    return 10 * power;
  }

  const TIME_STEPS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];

  function clock(seconds, withSeconds) {
    const date = new Date(seconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    const text = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
    return withSeconds ? `${text}:${pad(date.getSeconds())}` : text;
  }

  // Prepare the canvas for its CSS size at the device's pixel ratio; returns the context
  function prepare(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    return { context, width, height };
  }

  // Draw a chart.
  //   spec.kind: "line" or "bars" (bars are stacked, one stack per time)
  //   spec.series: [{name, color?, values: [[time, value|null], ...]}]
  //   spec.from, spec.to: the time range shown (Unix seconds)
  //   spec.format(value): text of a value; spec.max: fixed top of the value axis
  //   spec.integer: values are counts (ticks at whole numbers)
  //   spec.empty: text shown when there is nothing to draw
  function draw(canvas, spec) {
    const { context: g, width, height } = prepare(canvas);
    const font = css("--chart-font") || "12px system-ui, sans-serif";
    const text = css("--muted") || "#666";
    const grid = css("--grid") || "#ddd";
    const format = spec.format || ((v) => String(Math.round(v * 100) / 100));
    g.font = font;
    g.textBaseline = "middle";

    const series = spec.series.map((s, i) => ({ ...s, color: s.color || PALETTE[i % PALETTE.length] }));
    const inRange = (p) => p[0] >= spec.from && p[0] <= spec.to && p[1] !== null && p[1] !== undefined;
    let top = 0;
    let points = 0;
    if (spec.kind === "bars") {
      const totals = new Map();
      for (const s of series) {
        for (const p of s.values.filter(inRange)) {
          totals.set(p[0], (totals.get(p[0]) || 0) + p[1]);
          points += 1;
        }
      }
      for (const total of totals.values()) top = Math.max(top, total);
    } else {
      for (const s of series) {
        for (const p of s.values.filter(inRange)) {
          top = Math.max(top, p[1]);
          points += 1;
        }
      }
    }
    canvas.dataset.points = String(points);
    if (spec.max !== undefined) top = spec.max;
    if (!(top > 0)) top = 1;
    const step = spec.integer ? Math.max(1, niceStep(top, 4)) : niceStep(top, 4);
    top = Math.ceil(top / step - 1e-9) * step;

    // Room for the value labels on the left, the legend above and the time labels below
    let labelWidth = 0;
    for (let v = 0; v <= top + 1e-9; v += step) labelWidth = Math.max(labelWidth, g.measureText(format(v)).width);
    // The legend: each series with its latest value, in as many rows as it needs
    const legend = [];
    let row = 0;
    let at = Math.ceil(labelWidth) + 10;
    for (const s of series) {
      const values = s.values.filter(inRange);
      const label = `${s.name} ${values.length ? format(values[values.length - 1][1]) : "–"}`;
      const size = 14 + g.measureText(label).width;
      if (at + size > width && at > Math.ceil(labelWidth) + 10) {
        row += 1;
        at = Math.ceil(labelWidth) + 10;
      }
      legend.push({ label, color: s.color, x: at, y: 9 + 16 * row });
      at += size + 14;
    }
    const legendHeight = 16 * (row + 1) + 2;
    const plot = { left: Math.ceil(labelWidth) + 10, right: width - 8, top: legendHeight + 8, bottom: height - 20 };
    const span = Math.max(1, spec.to - spec.from);
    const x = (t) => plot.left + ((t - spec.from) / span) * (plot.right - plot.left);
    const y = (v) => plot.bottom - (v / top) * (plot.bottom - plot.top);

    // Grid and value axis
    g.strokeStyle = grid;
    g.fillStyle = text;
    g.lineWidth = 1;
    g.textAlign = "right";
    for (let v = 0; v <= top + 1e-9; v += step) {
      const at = Math.round(y(v)) + 0.5;
      g.beginPath();
      g.moveTo(plot.left, at);
      g.lineTo(plot.right, at);
      g.stroke();
      g.fillText(format(v), plot.left - 6, at);
    }
    // Time axis: ticks at round clock times
    const tickStep = TIME_STEPS.find((s) => span / s <= 6) || 3600;
    g.textAlign = "center";
    g.textBaseline = "top";
    for (let t = Math.ceil(spec.from / tickStep) * tickStep; t <= spec.to; t += tickStep) {
      const at = Math.round(x(t)) + 0.5;
      g.beginPath();
      g.moveTo(at, plot.bottom);
      g.lineTo(at, plot.bottom + 4);
      g.stroke();
      const label = clock(t, tickStep < 60);
      const half = g.measureText(label).width / 2;
      if (at - half >= 0 && at + half <= width) g.fillText(label, at, plot.bottom + 6);
    }

    // Data
    g.save();
    g.beginPath();
    g.rect(plot.left, plot.top - 2, plot.right - plot.left, plot.bottom - plot.top + 4);
    g.clip();
    if (spec.kind === "bars") {
      const interval = spec.interval || 1;
      // Whole pixels, with a gap between bars only when they are wide enough for one
      const slot = (interval / span) * (plot.right - plot.left);
      const barWidth = Math.max(1, slot > 4 ? slot - 1 : slot);
      const base = new Map();
      for (const s of series) {
        g.fillStyle = s.color;
        for (const [t, v] of s.values.filter(inRange)) {
          if (!v) continue;
          const below = base.get(t) || 0;
          const yTop = y(below + v);
          const left = Math.round(x(t) - barWidth);
          g.fillRect(left, yTop, Math.max(1, Math.round(x(t)) - left - (slot > 4 ? 1 : 0)), y(below) - yTop);
          base.set(t, below + v);
        }
      }
    } else {
      g.lineWidth = 2;
      g.lineJoin = "round";
      for (const s of series) {
        g.strokeStyle = s.color;
        g.beginPath();
        let drawing = false;
        let last = null;
        for (const p of s.values) {
          if (!inRange(p)) {
            drawing = false;
            continue;
          }
          if (drawing) g.lineTo(x(p[0]), y(p[1]));
          else g.moveTo(x(p[0]), y(p[1]));
          drawing = true;
          last = p;
        }
        g.stroke();
        if (last) { // a dot on the latest value
          g.fillStyle = s.color;
          g.beginPath();
          g.arc(x(last[0]), y(last[1]), 3, 0, 2 * Math.PI);
          g.fill();
        }
      }
    }
    g.restore();

    g.textBaseline = "middle";
    g.textAlign = "left";
    for (const item of legend) {
      g.fillStyle = item.color;
      g.fillRect(item.x, item.y - 5, 10, 10);
      g.fillStyle = text;
      g.fillText(item.label, item.x + 14, item.y);
    }
    if (!points && spec.empty) {
      g.textAlign = "center";
      g.fillStyle = text;
      g.fillText(spec.empty, (plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2);
    }
    canvas.chart = { spec, series, plot, x, from: spec.from, to: spec.to, format };
  }

  // Show the values nearest the pointer's time in the element `readout`
  function attachReadout(canvas, readout) {
    canvas.addEventListener("mousemove", (event) => {
      const chart = canvas.chart;
      if (!chart) return;
      const box = canvas.getBoundingClientRect();
      const px = event.clientX - box.left;
      if (px < chart.plot.left || px > chart.plot.right) {
        readout.hidden = true;
        return;
      }
      const t = chart.from + ((px - chart.plot.left) / (chart.plot.right - chart.plot.left)) * (chart.to - chart.from);
      const parts = [];
      let when = null;
      for (const s of chart.series) {
        let best = null;
        for (const p of s.values) {
          if (p[1] === null || p[1] === undefined) continue;
          if (!best || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
        }
        if (best) {
          when = best[0];
          parts.push(`${s.name}: ${chart.format(best[1])}`);
        }
      }
      if (!parts.length) {
        readout.hidden = true;
        return;
      }
      readout.textContent = `${clock(when, true)}  ·  ${parts.join("  ·  ")}`;
      readout.hidden = false;
    });
    canvas.addEventListener("mouseleave", () => { readout.hidden = true; });
  }

  return { draw, attachReadout, PALETTE };
})();
