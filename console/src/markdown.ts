// Model answers as Markdown: parsed by marked, then sanitised by DOMPurify before they reach
// the page (an answer is untrusted text: no scripts, handlers or javascript: links).
import { marked } from "marked";
import DOMPurify from "dompurify";

export function renderMarkdown(text: string): string {
  const html = marked.parse(text, { async: false, gfm: true, breaks: true });
  return DOMPurify.sanitize(html, { USE_PROFILES: { html: true } });
}
