"use strict";
// The history charts: plain SVG drawn here (no library, no CDN), from GET /api/queues/{q}/history.
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART = { width: 420, height: 110, left: 44, right: 8, top: 8, bottom: 16 };

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 60) return (Math.round(s * 10) / 10) + " s";
  return (Math.round(s / 6) / 10) + " min";
}

function minuteLabel(at) {
  return new Date(at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// A round upper bound for an axis: 1, 2 or 5 times a power of ten.
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function frame(svg, maxLabel, minutes) {
  const { width, height, left, right, top, bottom } = CHART;
  svg.append(
    svgEl("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, stroke: "#dde2e7" }),
    svgEl("line", { x1: left, y1: top, x2: width - right, y2: top, stroke: "#eef1f4" }),
    svgEl("text", { x: left - 4, y: top + 8, "text-anchor": "end", text: maxLabel }),
    svgEl("text", { x: left - 4, y: height - bottom, "text-anchor": "end", text: "0" }),
    svgEl("text", { x: left, y: height - 3, text: minutes.length ? minuteLabel(minutes[0].at) : "" }),
    svgEl("text", { x: width - right, y: height - 3, "text-anchor": "end",
                    text: minutes.length ? minuteLabel(minutes[minutes.length - 1].at) : "" }));
}

// Runs per minute as bars, the failed part of each in red; each bar's <title> gives the numbers.
function runsChart(minutes) {
  const { width, height, left, right, top, bottom } = CHART;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "data-testid": "runs-chart" });
  const max = niceMax(Math.max(0, ...minutes.map((m) => m.processed)));
  frame(svg, String(max), minutes);
  const span = (width - left - right) / Math.max(1, minutes.length);
  const scale = (height - top - bottom) / max;
  minutes.forEach((m, i) => {
    if (!m.processed) return;
    const x = left + i * span + 0.5, w = Math.max(1, span - 1);
    const h = m.processed * scale, hf = m.failed * scale;
    const tip = `${minuteLabel(m.at)}: ${m.processed} runs, ${m.failed} failed`;
    const group = svgEl("g", { "data-processed": m.processed, "data-failed": m.failed, class: "bar" },
      svgEl("title", { text: tip }),
      svgEl("rect", { x, y: height - bottom - h, width: w, height: h - hf, fill: "#8c959f" }));
    if (hf > 0) group.append(svgEl("rect", { x, y: height - bottom - hf, width: w, height: hf, fill: "#cf222e" }));
    svg.append(group);
  });
  return svg;
}

// p50 and p95 run durations as lines; a minute without runs leaves a gap.
function durationChart(minutes) {
  const { width, height, left, right, top, bottom } = CHART;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "data-testid": "duration-chart" });
  const max = niceMax(Math.max(0, ...minutes.map((m) => m.p95 || 0)));
  frame(svg, fmtSeconds(max), minutes);
  const span = (width - left - right) / Math.max(1, minutes.length);
  const y = (v) => height - bottom - (v / max) * (height - top - bottom);
  for (const [key, color] of [["p50", "#0969da"], ["p95", "#bf8700"]]) {
    let points = [];
    const flush = () => {
      if (points.length === 1) {
        const [cx, cy] = points[0].split(",");
        svg.append(svgEl("circle", { cx, cy, r: 3, fill: color }));
      } else if (points.length > 1) {
        svg.append(svgEl("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 1.5 }));
      }
      points = [];
    };
    minutes.forEach((m, i) => {
      if (m[key] === null || m[key] === undefined) { flush(); return; }
      points.push(`${(left + (i + 0.5) * span).toFixed(1)},${y(m[key]).toFixed(1)}`);
    });
    flush();
  }
  minutes.forEach((m, i) => {
    if (m.p50 === null) return;
    const tip = `${minuteLabel(m.at)}: p50 ${fmtSeconds(m.p50)}, p95 ${fmtSeconds(m.p95)}, p99 ${fmtSeconds(m.p99)}`;
    svg.append(svgEl("rect", { x: left + i * span, y: top, width: span, height: height - top - bottom,
                               fill: "transparent" }, svgEl("title", { text: tip })));
  });
  return svg;
}

// One card per queue: totals over the window, then both charts side by side, each `width` wide.
function queueCharts(queue, minutes, width) {
  CHART.width = Math.max(300, Math.floor(width));
  const runs = minutes.reduce((sum, m) => sum + m.processed, 0);
  const failed = minutes.reduce((sum, m) => sum + m.failed, 0);
  const card = document.createElement("div");
  card.className = "chart";
  card.setAttribute("data-testid", "chart-" + queue);
  card.setAttribute("data-runs", String(runs));
  const title = document.createElement("h3");
  const span = minutes.length >= 120 ? (minutes.length / 60) + " hours" : minutes.length + " min";
  title.textContent = `${queue} · ${runs} runs, ${failed} failed in the last ${span}`;
  const pair = document.createElement("div");
  pair.className = "pair";
  for (const [caption, svg] of [["runs per minute (red: failed)", runsChart(minutes)],
                                ["run duration per minute: p50, p95", durationChart(minutes)]]) {
    const figure = document.createElement("figure");
    const label = document.createElement("figcaption");
    label.textContent = caption;
    svg.setAttribute("width", String(CHART.width));
    svg.setAttribute("height", String(CHART.height));
    figure.append(label, svg);
    pair.append(figure);
  }
  card.append(title, pair);
  return card;
}
