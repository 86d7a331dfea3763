// A small generic XML tree: what the concept modules (domain, checkpoint,
// backup) read from and write to. Parsing is done by libxml2 (libxml2-wasm);
// this module only converts its DOM to plain values and formats them back.

export interface XmlElement {
  name: string;
  /** attributes in document order */
  attrs: [string, string][];
  /** child elements and non-whitespace text, in document order */
  children: XmlNode[];
}

export type XmlNode = XmlElement | string;
