// A tiny element builder: el("li", {className, dataset, disabled, ...}, child, "text", ...).

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else node[key] = value;
  }
  node.append(...children.filter((c) => c != null));
  return node;
}
