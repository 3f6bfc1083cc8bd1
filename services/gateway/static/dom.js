// Building the DOM without innerHTML: every string goes in as a text node or an attribute value.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.setAttribute("class", value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** An HTML element: h("p", {class: "x"}, "text", otherNode). */
export function h(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, the same way. */
export function svg(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function fixed(value, digits = 3) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

export function percent(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(0)}%` : "–";
}

export function ms(value) {
  if (typeof value !== "number") return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(1)} s` : `${Math.round(value)} ms`;
}

export function usd(value) {
  return typeof value === "number" ? `$${value.toFixed(value < 0.01 && value > 0 ? 4 : 3)}` : "–";
}

/** The provenance banner (simulated figures, uncalibrated CLIP), or nothing when there is no note. */
export function noteBanner(note) {
  if (!note) return null;
  return h("p", { class: "note", role: "note" }, h("strong", {}, "Not a verdict on real providers: "), note);
}

/** A labelled <select> whose first option means "any". */
export function choice(label, values, onchange) {
  const id = `choice-${label.toLowerCase().replace(/\W+/g, "-")}`;
  const select = h("select", { id, onchange: () => onchange(select.value) },
    h("option", { value: "" }, "any"),
    values.map((value) => h("option", { value }, value)));
  return h("div", { class: "field" }, h("label", { for: id }, label), select);
}
