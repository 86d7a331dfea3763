// The generic tree: libvirt-style formatting, and the safety limits in front of libxml2.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, VirError } from '../../src/errors.js';
import { XML_MAX_BYTES, XML_MAX_DEPTH, element, formatXml, parseXml } from '../../src/xml/tree.js';

function xmlError(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof VirError, `not a VirError: ${String(e)}`);
    assert.equal(e.code, ErrorCode.XML_ERROR, e.message);
    assert.match(e.message, re);
    return true;
  });
}

test('format: libvirt layout (2-space indent, single quotes, <x/>, inline text, trailing newline)', () => {
  const tree = element('a', [['x', '1'], ['y', "it's <&> \"q\""]], [
    element('b'),
    element('c', [], ['text & <more>']),
    element('d', [], [element('e', [['k', 'v']])]),
  ]);
  assert.equal(
    formatXml(tree),
    "<a x='1' y='it&apos;s &lt;&amp;&gt; &quot;q&quot;'>\n" +
      '  <b/>\n' +
      '  <c>text &amp; &lt;more&gt;</c>\n' +
      '  <d>\n' +
      "    <e k='v'/>\n" +
      '  </d>\n' +
      '</a>\n',
  );
  assert.deepEqual(parseXml(formatXml(tree)), tree);
});

test('parse: whitespace between elements is dropped, text content is kept exactly', () => {
  const t = parseXml('<a>\n  <b> x </b>\n  <c>  </c>\n<!-- comment --><?pi x?></a>');
  assert.deepEqual(t, { name: 'a', attrs: [], children: [{ name: 'b', attrs: [], children: [' x '] }, { name: 'c', attrs: [], children: ['  '] }] });
});

test('parse: CDATA becomes text, character references resolve, attributes keep their order', () => {
  const t = parseXml("<a z='1' a='&#65;&lt;'><![CDATA[<raw>]]>&amp;</a>");
  assert.deepEqual(t, { name: 'a', attrs: [['z', '1'], ['a', 'A<']], children: ['<raw>&'] });
});

test('round trip: mixed content, newlines/tabs/CR in attributes and text, namespaces', () => {
  const xml = "<a xmlns:q='urn:q'><q:b q:c='1'/>x<c/>y&#13;z<d t='a&#10;b&#9;c&#13;'/></a>";
  const once = formatXml(parseXml(xml));
  assert.equal(formatXml(parseXml(once)), once);
  const t = parseXml(once);
  assert.deepEqual(t.attrs, [['xmlns:q', 'urn:q']]);
  assert.equal((t.children[0] as { name: string }).name, 'q:b');
  assert.ok(t.children.includes('y\rz'));
  assert.deepEqual((t.children[4] as { attrs: unknown }).attrs, [['t', 'a\nb\tc\r']]);
});

test('safety: DOCTYPE and ENTITY declarations are refused before libxml2 sees them', () => {
  xmlError(() => parseXml('<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'), /DOCTYPE/);
  const lol = '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n<!ENTITY lol2 "&lol;&lol;&lol;">\n]>\n<lolz>&lol2;</lolz>';
  xmlError(() => parseXml(lol), /DOCTYPE declarations at line 2, column 1/);
  xmlError(() => parseXml('<a><!ENTITY x "y"></a>'), /ENTITY/);
  xmlError(() => parseXml('<a>&undefined;</a>'), /malformed XML document at line 1.*undefined/);
});

test('safety: size, depth, NUL, empty and malformed input are XML_ERROR with a position', () => {
  xmlError(() => parseXml(`<a>${'x'.repeat(XML_MAX_BYTES)}</a>`), /too large/);
  // multi-byte characters count as bytes
  xmlError(() => parseXml(`<a>${'\u20ac'.repeat(XML_MAX_BYTES / 3 + 10)}</a>`), /too large/);
  xmlError(() => parseXml('<a>'.repeat(XML_MAX_DEPTH + 1) + '</a>'.repeat(XML_MAX_DEPTH + 1)), /nested too deeply/);
  assert.doesNotThrow(() => parseXml('<a>'.repeat(XML_MAX_DEPTH) + '</a>'.repeat(XML_MAX_DEPTH)));
  xmlError(() => parseXml('<a>'.repeat(100000)), /malformed|nested/);
  xmlError(() => parseXml('<a/>\0<b/>'), /NUL character at line 1, column 5/);
  xmlError(() => parseXml('   '), /empty/);
  xmlError(() => parseXml('<a>\n<b></a>'), /malformed XML document at line 2/);
  xmlError(() => parseXml('<a/><b/>'), /malformed/);
  xmlError(() => parseXml("<a x='1' x='2'/>"), /malformed/);
});

test('encoding declarations do not change how the string is read', () => {
  const t = parseXml("<?xml version='1.0' encoding='ISO-8859-1'?><a>\u00e9\u20ac</a>");
  assert.deepEqual(t.children, ['\u00e9\u20ac']);
});
