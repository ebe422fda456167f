// A small, safe Markdown renderer for model output: it builds DOM nodes and sets only textContent
// and a few fixed attributes, so no input can become markup, a script, a handler or a style.
// Blocks: paragraphs, ``` / ~~~ code fences (also unterminated, while a reply streams), headings,
// lists (nested by indentation), block quotes, rules. Inline: `code`, **bold**, *italic*, ~~strike~~,
// [links](https://...) and bare http(s) URLs; only http(s) URLs ever become links.

import { h } from './dom.js';

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w.+#-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])\s+(.*)$/;
const BLANK = /^\s*$/;

export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  renderBlocks(String(source ?? '').replace(/\r\n?/g, '\n').split('\n'), fragment, 0);
  return fragment;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function renderBlocks(lines, parent, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (BLANK.test(line)) {
      i += 1;
      continue;
    }
    const fence = line.match(FENCE);
    if (fence) {
      const marker = fence[1];
      const closing = new RegExp(`^ {0,3}${marker[0]}{${marker.length},}\\s*$`);
      const body = [];
      i += 1;
      while (i < lines.length && !closing.test(lines[i])) body.push(lines[i++]);
      i += 1;
      parent.append(codeBlock(body.join('\n'), fence[2]));
      continue;
    }
    if (RULE.test(line)) {
      parent.append(h('hr'));
      i += 1;
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      // Reply headings sit below the page's own h1/h2.
      const level = Math.min(heading[1].length + 2, 6);
      parent.append(inline(heading[2], h(`h${level}`)));
      i += 1;
      continue;
    }
    if (QUOTE.test(line) && depth < 8) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].match(QUOTE)[1]);
      const quote = h('blockquote');
      renderBlocks(quoted, quote, depth + 1);
      parent.append(quote);
      continue;
    }
    const item = line.match(ITEM);
    if (item && depth < 8) {
      i = renderList(lines, i, parent, depth);
      continue;
    }
    const paragraph = [line.trim()];
    i += 1;
    while (i < lines.length && !BLANK.test(lines[i]) && !startsBlock(lines[i])) paragraph.push(lines[i++].trim());
    parent.append(inline(paragraph.join('\n'), h('p')));
  }
}

function renderList(lines, start, parent, depth) {
  const first = lines[start].match(ITEM);
  const ordered = /\d/.test(first[2]);
  const indent = first[1].length;
  const list = ordered ? h('ol') : h('ul');
  if (ordered && parseInt(first[2], 10) !== 1) list.setAttribute('start', String(parseInt(first[2], 10)));
  let items = [];
  let contentOffset = 0;
  const flush = () => {
    if (!items.length) return;
    const li = h('li');
    renderBlocks(items, li, depth + 1);
    list.append(li);
    items = [];
  };
  let i = start;
  while (i < lines.length) {
    const line = lines[i];
    const match = line.match(ITEM);
    if (match && match[1].length <= indent + 1 && /\d/.test(match[2]) === ordered) {
      flush();
      contentOffset = match[1].length + match[2].length + 1;
      items.push(match[3]);
      i += 1;
      continue;
    }
    if (match && match[1].length < indent) break;
    if (BLANK.test(line)) {
      let next = i + 1;
      while (next < lines.length && BLANK.test(lines[next])) next += 1;
      if (next >= lines.length) break;
      const after = lines[next];
      const sibling = after.match(ITEM);
      const nested = after.length - after.trimStart().length >= contentOffset;
      if (!nested && !(sibling && sibling[1].length <= indent + 1)) break;
      items.push('');
      i += 1;
      continue;
    }
    const lead = line.length - line.trimStart().length;
    if (lead >= Math.min(contentOffset, indent + 2)) {
      items.push(line.slice(Math.min(lead, contentOffset)));
    } else if (!startsBlock(line) && items.length && !BLANK.test(items[items.length - 1])) {
      items.push(line.trim()); // a lazy continuation of the item's paragraph
    } else {
      break;
    }
    i += 1;
  }
  flush();
  parent.append(list);
  return i;
}

function codeBlock(code, language) {
  const label = language || 'code';
  return h(
    'div',
    { class: 'code-block' },
    h(
      'div',
      { class: 'code-head' },
      h('span', { text: label }),
      h('button', { type: 'button', class: 'copy-code', text: 'Copy', 'aria-label': `Copy ${label} block` }),
    ),
    h('pre', { tabindex: '0' }, h('code', { text: code })),
  );
}

export function safeUrl(raw) {
  if (!/^https?:\/\//i.test(raw)) return null;
  try {
    const url = new URL(raw);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

const INLINE = new RegExp(
  [
    /\\([\\`*_{}[\]()#+\-.!~>|])/.source, // 1 escaped character
    /(`+)([^`]|[^`][\s\S]*?[^`])\2(?!`)/.source, // 2, 3 code span
    /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 4 bold
    /(?<![\w\\])__(?=\S)([\s\S]*?\S)__(?!\w)/.source, // 5 bold
    /\*(?=[^\s*])([\s\S]*?[^\s*\\])\*/.source, // 6 italic
    /(?<![\w\\])_(?=[^\s_])([\s\S]*?[^\s_\\])_(?!\w)/.source, // 7 italic
    /~~(?=\S)([\s\S]*?\S)~~/.source, // 8 strike
    /\[([^\]\n]+)\]\(\s*<?([^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*)>?(?:\s+"[^"\n]*")?\s*\)/.source, // 9, 10 link
    /(https?:\/\/(?:[^\s<>()]|\([^\s<>()]*\))*(?:[^\s<>().,;:!?'"\]*_~]|\([^\s<>()]*\)))/.source, // 11 bare URL
    /(\n)/.source, // 12 line break
  ].join('|'),
  'g',
);

function inline(text, parent, inLink = false) {
  let last = 0;
  INLINE.lastIndex = 0;
  const matches = [...text.matchAll(INLINE)];
  for (const m of matches) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[1] !== undefined) parent.append(m[1]);
    else if (m[3] !== undefined) parent.append(h('code', { text: m[3].replace(/^ (.*) $/s, '$1') }));
    else if (m[4] !== undefined || m[5] !== undefined) parent.append(inline(m[4] ?? m[5], h('strong'), inLink));
    else if (m[6] !== undefined || m[7] !== undefined) parent.append(inline(m[6] ?? m[7], h('em'), inLink));
    else if (m[8] !== undefined) parent.append(inline(m[8], h('del'), inLink));
    else if (m[9] !== undefined) {
      const href = inLink ? null : safeUrl(m[10]);
      if (href) parent.append(inline(m[9], link(href), true));
      else parent.append(m[0]); // not http(s): shown as the text it is
    } else if (m[11] !== undefined) {
      const href = inLink ? null : safeUrl(m[11]);
      parent.append(href ? link(href, m[11]) : m[11]);
    } else if (m[12] !== undefined) parent.append(h('br'));
  }
  if (last < text.length) parent.append(text.slice(last));
  return parent;
}

function link(href, text) {
  return h('a', { href, rel: 'noopener noreferrer nofollow', target: '_blank', text });
}
