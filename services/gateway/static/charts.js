// Horizontal bar charts as inline SVG: one row per provider, optional 95% interval whiskers.
// Labels sit above their bars so a chart stays legible when the page is phone-narrow.

import { h, svg } from "./dom.js";

const WIDTH = 400;
const BAR = 16;
const ROW_GAP = 10;
const LABEL = 16;
let charts = 0;

/**
 * rows: [{label, bars: [{value, low?, high?, series}]}]; series names a CSS class (bar colour).
 * format(value) -> text; max: the scale's top (default: the largest value or whisker).
 */
export function barChart({ title, caption, rows, format, max, legend = [] }) {
  const id = `chart-${++charts}`;
  const values = rows.flatMap((row) => row.bars.flatMap((bar) => [bar.value, bar.high]))
    .filter((value) => typeof value === "number");
  const scaleTop = max ?? (Math.max(...values, 0) * 1.1 || 1);
  const x = (value) => (Math.min(Math.max(0, value), scaleTop) / scaleTop) * (WIDTH - 70);
  const rowHeight = (row) => LABEL + row.bars.length * (BAR + 3) + ROW_GAP;
  const height = rows.reduce((sum, row) => sum + rowHeight(row), 0) + 4;

  let y = 0;
  const marks = rows.map((row) => {
    const group = svg("g", { class: "chart-row" }, svg("text", { x: 0, y: y + 12, class: "chart-label" }, row.label));
    row.bars.forEach((bar, index) => {
      const barTop = y + LABEL + index * (BAR + 3);
      const mid = barTop + BAR / 2;
      if (typeof bar.value !== "number") {
        group.append(svg("text", { x: 0, y: mid + 4, class: "chart-value" }, `${bar.series ?? ""} no data`.trim()));
        return;
      }
      group.append(svg("rect", { x: 0, y: barTop, width: Math.max(1, x(bar.value)), height: BAR, class: `bar ${bar.series ?? ""}` },
        svg("title", {}, `${row.label}${bar.series ? ` ${bar.series}` : ""}: ${format(bar.value)}`)));
      let end = x(bar.value);
      if (typeof bar.low === "number" && typeof bar.high === "number") {
        const [a, b] = [x(bar.low), x(bar.high)];
        group.append(svg("path", { d: `M${a},${mid} H${b} M${a},${mid - 5} V${mid + 5} M${b},${mid - 5} V${mid + 5}`, class: "whisker" }));
        end = Math.max(end, b);
      }
      group.append(svg("text", { x: Math.min(end + 4, WIDTH - 64), y: mid + 4, class: "chart-value" }, format(bar.value)));
    });
    y += rowHeight(row);
    return group;
  });

  return h("figure", { class: "chart" },
    h("figcaption", { id: `${id}-title` }, h("strong", {}, title), caption ? ` ${caption}` : ""),
    svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-labelledby": `${id}-title`, class: "bars" }, marks),
    legend.length ? h("p", { class: "legend" }, legend.map(([series, text]) => h("span", { class: `key ${series}` }, text))) : null);
}
