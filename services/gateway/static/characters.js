// The characters list, and one character: its references beside every shot, with scores and filters.

import { getJson, picture } from "./api.js";
import { choice, fixed, h, ms, noteBanner, usd } from "./dom.js";

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function characterCard(character) {
  const { requested, scored, failed } = character.shots;
  return h("li", { class: "card character-card" },
    h("h2", {}, h("a", { href: `#/characters/${encodeURIComponent(character.character_id)}` }, character.name)),
    h("p", { class: "meta" }, `${character.provider} · ${character.strategy} · `,
      h("span", { class: `status status-${character.status}` }, character.status)),
    h("p", {}, `${scored} of ${requested} shots scored`, failed ? `, ${failed} failed` : ""),
    h("p", { class: "meta" }, h("time", { datetime: character.created_at }, when(character.created_at))));
}

export async function characterList() {
  const list = h("ul", { class: "cards" });
  const more = h("button", { type: "button", hidden: true }, "More characters");
  let next = "/v1/characters?limit=50"; // each page names the next one
  async function page() {
    const body = await getJson(next);
    list.append(...body.characters.map(characterCard));
    next = body.next ?? null;
    more.hidden = !next;
  }
  more.addEventListener("click", () => page().catch((error) => more.replaceWith(h("p", { class: "error" }, error.message))));
  await page();
  const empty = list.children.length ? null : h("p", {}, "No characters yet. `likeness demo` makes one.");
  return h("section", { "aria-labelledby": "characters-title" },
    h("h1", { id: "characters-title" }, "Characters"), empty, list, more);
}

/** Thumbnails of a character's references (shown beside every shot). */
export function referenceStrip(references, className = "refs") {
  return h("div", { class: className },
    references.map((ref, index) => picture(ref, `Reference ${index + 1} of ${references.length}`, "ref")));
}

function verdictOf(shot) {
  return shot.score?.verdict ?? shot.status;
}

export function verdictBadge(verdict) {
  return h("span", { class: `badge verdict-${verdict.replace(/[^a-z_]/g, "")}` }, verdict.replace("_", " "));
}

function figure(term, value, title) {
  return [h("dt", {}, term), h("dd", title ? { title } : {}, value)];
}

function shotCard(shot, references, position) {
  const score = shot.score;
  const clip = score?.clip;
  const uncalibrated = clip && clip.calibrated === false ? " (uncalibrated)" : "";
  const scenario = shot.params.scenario ?? "unspecified";
  const image = shot.image
    ? picture(shot.image, `Shot ${position}: ${shot.params.prompt}`, "shot")
    : h("div", { class: "shot placeholder" }, shot.status === "failed" ? "no image: failed" : "no image yet");
  return h("li", {
    class: "card shot-card",
    "data-shot-id": shot.shot_id,
    "data-scenario": scenario,
    "data-provider": shot.provider,
    "data-verdict": verdictOf(shot),
  },
    h("div", { class: "pair" }, referenceStrip(references), image),
    h("div", { class: "shot-text" },
      h("p", { class: "shot-head" }, verdictBadge(verdictOf(shot)), h("span", { class: "scenario" }, scenario)),
      h("p", { class: "prompt" }, shot.params.prompt),
      h("dl", { class: "figures" },
        figure("provider", shot.provider),
        figure("face distance", fixed(score?.face?.distance), "lower is more alike; the verdict's threshold is in the reason"),
        figure("CLIP-I", fixed(clip?.image_similarity) + uncalibrated),
        figure("CLIP-T", fixed(clip?.text_similarity) + uncalibrated),
        figure("latency", ms(shot.latency_ms)),
        figure("cost", usd(shot.cost_usd))),
      score ? h("p", { class: "reason" }, score.reason) : null,
      shot.failure ? h("p", { class: "error" }, `Failed at ${shot.failure.stage}: ${shot.failure.reason}`) : null,
      shot.image
        ? h("a", { href: `#/evaluate/${encodeURIComponent(shot.character_id)}/${encodeURIComponent(shot.shot_id)}`, class: "small" }, "Rate this shot")
        : null));
}

function distinct(values) {
  return [...new Set(values)].sort();
}

export async function characterDetail(characterId) {
  const [character, report] = await Promise.all([
    getJson(`/v1/characters/${encodeURIComponent(characterId)}`),
    getJson("/v1/reports", { character_id: characterId }),
  ]);
  const shots = character.shots;
  const cards = shots.map((shot, index) => shotCard(shot, character.references, index + 1));
  const shown = h("p", { class: "count", role: "status", "aria-live": "polite" });
  const filters = { scenario: "", provider: "", verdict: "" };

  function apply() {
    let visible = 0;
    for (const card of cards) {
      card.hidden = Object.entries(filters).some(([name, value]) => value && card.dataset[name] !== value);
      visible += card.hidden ? 0 : 1;
    }
    shown.textContent = `Showing ${visible} of ${cards.length} shots`;
  }
  const set = (name) => (value) => { filters[name] = value; apply(); };
  apply();

  const identity = character.identity;
  return h("section", { "aria-labelledby": "character-title" },
    h("p", {}, h("a", { href: "#/characters" }, "← All characters")),
    h("h1", { id: "character-title" }, character.name),
    h("p", { class: "meta" },
      `${character.provider} · ${character.strategy} · `,
      h("span", { class: `status status-${character.status}` }, character.status),
      identity ? ` · identity ${identity.state}` : ""),
    noteBanner(report.note),
    h("h2", {}, "References"),
    referenceStrip(character.references, "refs refs-large"),
    h("h2", {}, "Shots"),
    h("div", { class: "filters", role: "group", "aria-label": "Filter shots" },
      choice("Scenario", distinct(cards.map((c) => c.dataset.scenario)), set("scenario")),
      choice("Provider", distinct(cards.map((c) => c.dataset.provider)), set("provider")),
      choice("Verdict", distinct(cards.map((c) => c.dataset.verdict)), set("verdict"))),
    shown,
    h("ol", { class: "shots" }, cards));
}
