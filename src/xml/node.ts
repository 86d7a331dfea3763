// The plain XML tree and what reads, builds and formats it: no parser, so a
// module that only walks or writes trees (or a CLI describing its options)
// does not load libxml2. tree.ts parses into these trees and re-exports all of it.

export interface XmlElement {
  name: string;
  /** attributes in document order */
  attrs: [string, string][];
  /** child elements and non-whitespace text, in document order */
  children: XmlNode[];
}

export type XmlNode = XmlElement | string;

// ---------------------------------------------------------------- formatting

/** libvirt's virBufferEscapeString: the five XML specials; plus CR/TAB/LF in attributes so they survive re-parsing. */
export function escapeXml(s: string, inAttribute: boolean): string {
  let out = '';
  for (const ch of s) {
    switch (ch) {
      case '&': out += '&amp;'; break;
      case '<': out += '&lt;'; break;
      case '>': out += '&gt;'; break;
      case "'": out += '&apos;'; break;
      case '"': out += '&quot;'; break;
      case '\r': out += '&#13;'; break;
      case '\n': out += inAttribute ? '&#10;' : '\n'; break;
      case '\t': out += inAttribute ? '&#9;' : '\t'; break;
      default: out += ch;
    }
  }
  return out;
}

function formatAttrs(attrs: readonly [string, string][]): string {
  let s = '';
  for (const [k, v] of attrs) s += ` ${k}='${escapeXml(v, true)}'`;
  return s;
}

/**
 * libvirt's layout: two-space indent, single-quoted attributes, `<x/>` when
 * empty, text-only elements on one line, trailing newline. Mixed content
 * (text next to elements) is written on one line so it re-parses unchanged.
 */
export function formatXml(root: XmlElement, indent = 0): string {
  const out: string[] = [];
  formatInto(out, root, indent);
  return out.join('');
}

function formatInto(out: string[], el: XmlElement, level: number): void {
  const pad = '  '.repeat(level);
  const open = `<${el.name}${formatAttrs(el.attrs)}`;
  if (el.children.length === 0) {
    out.push(`${pad}${open}/>\n`);
    return;
  }
  const hasText = el.children.some((c) => typeof c === 'string');
  if (hasText) {
    out.push(`${pad}${open}>${formatInline(el.children)}</${el.name}>\n`);
    return;
  }
  out.push(`${pad}${open}>\n`);
  for (const c of el.children) formatInto(out, c as XmlElement, level + 1);
  out.push(`${pad}</${el.name}>\n`);
}

function formatInline(children: readonly XmlNode[]): string {
  let s = '';
  for (const c of children) {
    if (typeof c === 'string') s += escapeXml(c, false);
    else if (c.children.length === 0) s += `<${c.name}${formatAttrs(c.attrs)}/>`;
    else s += `<${c.name}${formatAttrs(c.attrs)}>${formatInline(c.children)}</${c.name}>`;
  }
  return s;
}

// ---------------------------------------------------------------- helpers for the concept modules

export function element(name: string, attrs: [string, string | null | undefined][] = [], children: XmlNode[] = []): XmlElement {
  const kept: [string, string][] = [];
  for (const [k, v] of attrs) if (v !== null && v !== undefined) kept.push([k, v]);
  return { name, attrs: kept, children };
}

/** Value of an attribute, or null when absent (like virXMLPropString). */
export function attr(el: XmlElement, name: string): string | null {
  for (const [k, v] of el.attrs) if (k === name) return v;
  return null;
}

export function childElements(el: XmlElement, name?: string): XmlElement[] {
  const out: XmlElement[] = [];
  for (const c of el.children) if (typeof c !== 'string' && (name === undefined || c.name === name)) out.push(c);
  return out;
}

/** First child element with this name, or null (like virXPathNode("./name")). */
export function firstChild(el: XmlElement, name: string): XmlElement | null {
  for (const c of el.children) if (typeof c !== 'string' && c.name === name) return c;
  return null;
}

/** XPath string(): concatenated text of the element and its descendants. */
export function textContent(el: XmlElement): string {
  let s = '';
  for (const c of el.children) s += typeof c === 'string' ? c : textContent(c);
  return s;
}

/**
 * libvirt's virXPathString("string(./name)"): text of the first child with
 * that name; null when absent or empty (libvirt treats "" as missing).
 */
export function childText(el: XmlElement, name: string): string | null {
  const c = firstChild(el, name);
  if (c === null) return null;
  const t = textContent(c);
  return t === '' ? null : t;
}

export function cloneElement(el: XmlElement): XmlElement {
  return {
    name: el.name,
    attrs: el.attrs.map(([k, v]) => [k, v] as [string, string]),
    children: el.children.map((c) => (typeof c === 'string' ? c : cloneElement(c))),
  };
}

/** Stable sort of elements by a rank table (names not in the table keep their order after the known ones). */
export function sortByRank<T extends { name: string }>(items: T[], order: readonly string[]): T[] {
  const rank = (n: string): number => {
    const i = order.indexOf(n);
    return i < 0 ? order.length : i;
  };
  return items
    .map((item, i) => ({ item, i, r: rank(item.name) }))
    .sort((a, b) => a.r - b.r || a.i - b.i)
    .map((x) => x.item);
}
