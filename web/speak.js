// The Speak tab's text: why a text would not be spoken, and long text cut into `text` messages that each fit
// a WebRTC data-channel message (64 KiB), split between words; only the last is `final` (speak it all now).
// Both transports send the same pieces, so they behave the same.

export const TEXT_PIECE_CHARS = 8000; // UTF-16 units: at most ~48 KB as JSON even with escapes or CJK text

/** Why `text` gives no speech (empty, or no letter or digit), or "" when it can be spoken. */
export function whyNotSpoken(text) {
  if (!text.trim()) return "Nothing to say: type some text first.";
  if (!/[\p{L}\p{N}]/u.test(text)) {
    return "Nothing to say: that text has no words (punctuation alone is not spoken).";
  }
  return "";
}

/** `text` events carrying `text` in pieces of at most `pieceChars`; the last one is final. */
export function textMessages(text, pieceChars = TEXT_PIECE_CHARS) {
  const messages = [];
  let i = 0;
  while (i < text.length) {
    let end = Math.min(text.length, i + pieceChars);
    if (end < text.length) {
      let cut = end;
      while (cut > i + pieceChars / 2 && !/\s/.test(text[cut - 1])) cut--;
      if (cut > i + pieceChars / 2) end = cut; // after a space: no word is split between two messages
      else if (isHighSurrogate(text.charCodeAt(end - 1))) end--; // never split a character
    }
    messages.push({ type: "text", text: text.slice(i, end), final: end >= text.length });
    i = end;
  }
  return messages;
}

function isHighSurrogate(code) {
  return code >= 0xd800 && code <= 0xdbff;
}
