"use strict";
// sdq web page: DOM helpers. Text from the API only ever goes in through textContent or
// attribute properties (never innerHTML), so prompts cannot inject markup.

const $ = (id) => document.getElementById(id);

// h("td", {className: "x"}, "text", childNode, ...): an element built without parsing HTML.
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("aria-") || k === "role" || k === "scope") el.setAttribute(k, String(v));
    else el[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Only http(s) URLs from the API are used as image sources or links.
function safeUrl(u) {
  if (typeof u !== "string") return null;
  try {
    const url = new URL(u, location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch (_) { return null; }
}

function fmtSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function fmtTime(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleString() : "–";
}

function pct(p) { return `${Math.floor((p || 0) * 100)}%`; }

function short(id) { return String(id).slice(0, 8); }

// At most `n` characters of `s`, cut with an ellipsis (the whole text goes in a title).
function truncate(s, n) {
  s = String(s ?? "").replace(/\s+/g, " ").trim();
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

// A number a person reads: 3 significant digits at most, no exponent.
function fmtNum(x) {
  if (!isFinite(x)) return "–";
  if (x >= 100) return Math.round(x).toLocaleString("en-US");
  return String(Number(x.toPrecision(x >= 1 ? 3 : 2)));
}

// Field errors: the API names a field ("params.width", "items[2].prompt", "sweep.steps"); the
// message goes next to the control whose wrapper lists that name in data-field.
const FieldErrors = {
  clear(form) {
    form.querySelectorAll(".error").forEach((e) => { e.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  },

  wrapperFor(form, field) {
    if (!field) return null;
    if (field.startsWith("sweep.")) {
      const key = field.slice(6);
      for (const row of form.querySelectorAll(".sweep-row")) {
        if (row.querySelector(".sweep-key").value === key) return row;
      }
    }
    let name = field;
    while (name) {
      for (const w of form.querySelectorAll("[data-field]")) {
        if (w.dataset.field.split(" ").includes(name)) return w;
      }
      const cut = Math.max(name.lastIndexOf("."), name.lastIndexOf("["));
      name = cut > 0 ? name.slice(0, cut) : "";
    }
    return null;
  },

  show(form, err, fallback) {
    const w = FieldErrors.wrapperFor(form, err.field);
    const box = w ? w.querySelector(".error") : fallback;
    box.textContent = err.message;
    const control = w && w.querySelector("input, select, textarea");
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
  },
};
