// Accessibility basics of the page now shown, evaluated in the browser by
// tests/integration/test_console.py: every form control has a label, every SVG and image
// a text alternative, every button and link a name, and visible text a contrast of at
// least 4.5:1 (3:1 for large text) against its background, from computed styles.
() => {
  const problems = [];
  const describe = (node) => node.outerHTML.slice(0, 120);
  for (const control of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
    const labelled = (control.id && document.querySelector(`label[for="${CSS.escape(control.id)}"]`))
      || control.closest("label") || control.getAttribute("aria-label") || control.getAttribute("aria-labelledby");
    if (!labelled) problems.push(`control without a label: ${describe(control)}`);
  }
  for (const svg of document.querySelectorAll("svg")) {
    if (svg.parentElement.closest("svg")) continue;
    const ids = (svg.getAttribute("aria-labelledby") || "").split(/\s+/).filter(Boolean);
    const named = svg.getAttribute("aria-hidden") === "true" || svg.getAttribute("aria-label")
      || (ids.length && ids.every((id) => document.getElementById(id) && document.getElementById(id).textContent.trim()));
    if (!named || !svg.querySelector(":scope > title")) problems.push(`svg without a title and label: ${describe(svg)}`);
  }
  for (const img of document.querySelectorAll("img")) {
    if (!img.hasAttribute("alt")) problems.push(`img without alt: ${describe(img)}`);
  }
  for (const control of document.querySelectorAll("button, a[href]")) {
    if (!control.closest("svg") && !(control.textContent.trim() || control.getAttribute("aria-label"))) {
      problems.push(`button or link without a name: ${describe(control)}`);
    }
  }
  const rgb = (value) => {
    const hex = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(value || "");
    if (hex) return hex.slice(1).map((h) => parseInt(h, 16));
    const parts = (value.match(/[\d.]+/g) || []).map(Number);
    return parts.length >= 3 ? parts : null;
  };
  const luminance = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const backgroundOf = (node) => {
    for (let n = node; n && n.nodeType === 1; n = n.parentElement) {
      if (n.dataset && n.dataset.bg) return rgb(n.dataset.bg);
      const c = rgb(getComputedStyle(n).backgroundColor);
      if (c && (c.length < 4 || c[3] > 0.5)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let text = walker.nextNode(); text; text = walker.nextNode()) {
    const node = text.parentElement;
    if (!text.textContent.trim() || seen.has(node) || node.closest("title, desc, script, style, noscript, option")) continue;
    seen.add(node);
    if (!node.checkVisibility({ visibilityProperty: true, opacityProperty: true })) continue;
    const style = getComputedStyle(node);
    const inSvg = node instanceof SVGElement;
    const fg = rgb(inSvg ? style.fill : style.color);
    if (!fg) continue;
    const bg = backgroundOf(node);
    const [a, b] = [luminance(fg.slice(0, 3)), luminance(bg)];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      problems.push(`contrast ${ratio.toFixed(2)}:1 for "${text.textContent.trim().slice(0, 40)}" (${fg} on ${bg})`);
    }
  }
  return problems;
}
