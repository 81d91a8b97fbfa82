// Building the page: every string from the server goes in as text, never as HTML.

/**
 * An element with attributes and children. `text` sets textContent, `on<event>` adds a
 * listener, `dataset` fills data-*, other attributes are set as strings; children are
 * nodes or strings (text nodes); null and false are skipped.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  append(node, ...children);
  return node;
}

export function append(node, ...children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

/** A timestamp as local date and time, or an empty string. */
export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** Shown in a `role=status` or `role=alert` element. */
export function say(node, message, kind = "info") {
  node.textContent = message;
  node.dataset.kind = kind;
  node.hidden = !message;
}

export function progressBar(value, label) {
  const bar = el("progress", { max: 100, value: value || 0, "aria-label": label });
  bar.textContent = `${value || 0}%`;
  return bar;
}

export function setProgress(bar, value) {
  bar.value = value || 0;
  bar.textContent = `${value || 0}%`;
}

export function statusBadge(status) {
  return el("span", { class: `badge status-${status}`, text: status, dataset: { status } });
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}
