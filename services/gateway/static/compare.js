// Providers side by side, from GET /v1/reports: charts, significance conclusions, the scorecard, costs.

import { getJson } from "./api.js";
import { barChart } from "./charts.js";
import { fixed, h, ms, noteBanner, percent, usd } from "./dom.js";

const CRITERIA = {
  consistency: "Consistency",
  training_time: "Training time",
  inference_latency: "Latency",
  cost: "Cost",
  integration_effort: "Integration",
  browser_compatibility: "Browser",
};

function charts(summaries) {
  const rows = (bars) => summaries.map((s) => ({ label: s.provider, bars: bars(s) }));
  return h("div", { class: "charts" },
    barChart({
      title: "Pass rate",
      caption: "share of scored shots judged the same character; whiskers: Wilson 95% interval.",
      rows: rows((s) => [{ value: s.pass_rate, low: s.pass_ci95_low, high: s.pass_ci95_high, series: "pass" }]),
      format: percent,
      max: 1,
    }),
    barChart({
      title: "Face distance",
      caption: "mean distance to the references (lower is more consistent); whiskers: Student-t 95% interval.",
      rows: rows((s) => [{ value: s.identity.mean, low: s.identity.ci95_low, high: s.identity.ci95_high, series: "distance" }]),
      format: (value) => fixed(value),
    }),
    barChart({
      title: "Latency",
      caption: "inference time per shot.",
      rows: rows((s) => [
        { value: s.latency_p50_ms, series: "p50" },
        { value: s.latency_p95_ms, series: "p95" },
      ]),
      format: ms,
      legend: [["p50", "median (p50)"], ["p95", "95th percentile"]],
    }),
    barChart({
      title: "Cost per shot",
      caption: "mean provider cost of a shot (identity building is counted separately below).",
      rows: rows((s) => [{ value: s.cost_per_shot_usd, series: "cost" }]),
      format: usd,
    }));
}

function table(caption, head, body) {
  return h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": caption },
    h("table", {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, head.map((cell) => h("th", { scope: "col" }, cell)))),
      h("tbody", {}, body)));
}

function scorecard(rows) {
  const names = Object.keys(CRITERIA);
  return table("Scorecard (weighted, 0–100; tier 1 at 70, tier 2 at 50)",
    ["Provider", "Total", "Tier", ...names.map((name) => CRITERIA[name])],
    rows.map((row) => h("tr", { class: "scorecard-row" },
      h("th", { scope: "row" }, row.provider),
      h("td", {}, fixed(row.total, 1)),
      h("td", {}, row.tier ? h("span", { class: `badge tier-${row.tier}` }, `tier ${row.tier}`) : "–"),
      names.map((name) => {
        const criterion = row.criteria.find((c) => c.name === name);
        if (!criterion) return h("td", {}, "–");
        return h("td", { title: criterion.detail },
          fixed(criterion.score, 0), h("span", { class: "basis" }, ` ${criterion.basis}`));
      }))));
}

function conclusions(comparisons) {
  if (!comparisons.length) {
    return h("p", {}, "Only one provider has scored shots: there is nothing to compare yet.");
  }
  return h("ul", { class: "conclusions" }, comparisons.map((c) => h("li", {},
    h("strong", {}, `${c.metric.replace("_", " ")}: `), c.conclusion,
    c.too_few ? null : h("span", { class: "meta" },
      ` (Welch p=${fixed(c.welch_p_adjusted)}, Mann-Whitney p=${fixed(c.mannwhitney_p_adjusted)}, Holm-adjusted)`))));
}

function scenarios(rows) {
  return table("Per scenario",
    ["Provider", "Scenario", "Scored", "Pass rate", "Face distance"],
    rows.map((s) => h("tr", {},
      h("th", { scope: "row" }, s.provider), h("td", {}, s.scenario), h("td", {}, String(s.shots_scored)),
      h("td", {}, percent(s.pass_rate)), h("td", {}, fixed(s.identity.mean)))));
}

function costs(report) {
  return [
    table(`Monthly cost for ${report.characters_projected} character(s)`,
      ["Provider", "Shots a month", "Per shot", "Per identity", "Monthly"],
      report.projections.map((p) => h("tr", {},
        h("th", { scope: "row" }, p.provider), h("td", {}, p.shots_per_month.toLocaleString()),
        h("td", {}, usd(p.cost_per_shot_usd)), h("td", {}, usd(p.cost_per_identity_usd)),
        h("td", {}, p.skipped ?? usd(p.monthly_cost_usd))))),
    report.break_evens.length
      ? h("ul", { class: "conclusions" }, report.break_evens.map((b) => h("li", {}, b.statement)))
      : null,
  ];
}

export async function comparison() {
  const report = await getJson("/v1/reports");
  const body = report.summaries.length
    ? [
      charts(report.summaries),
      h("h2", {}, "Is one provider more consistent?"),
      conclusions(report.comparisons),
      h("h2", {}, "Scorecard"),
      scorecard(report.scorecard),
      h("h2", {}, "Scenarios"),
      scenarios(report.scenarios),
      h("h2", {}, "Costs"),
      costs(report),
    ]
    : h("p", {}, "No shots yet: the report fills in as characters are made.");
  return h("section", { "aria-labelledby": "compare-title" },
    h("h1", { id: "compare-title" }, "Providers compared"),
    noteBanner(report.note),
    body);
}
