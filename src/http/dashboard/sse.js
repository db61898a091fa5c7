// Reading a text/event-stream response body. EventSource would do this, but
// it cannot send an Authorization header, so the page fetches the stream
// and parses it here.

// The server sends a keep-alive comment every 15 s: a stream silent for
// much longer than that is dead even if the socket has not noticed.
const STREAM_SILENCE_MS = 40000;

/**
 * Feed every event of `body` to `onEvent` until the stream ends (resolves)
 * or fails (rejects). A stream silent for too long is aborted through
 * `controller`, which makes the read reject.
 */
export async function readEvents(body, controller, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser(onEvent);
  let watchdog = null;
  const arm = () => {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
  };
  arm();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done || controller.signal.aborted) return;
      arm();
      parser.push(decoder.decode(value, { stream: true }));
    }
  } finally {
    clearTimeout(watchdog);
  }
}

/** A Server-Sent Events parser (the WHATWG event-stream format). */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buf = '';
    this.id = null;
    this.event = '';
    this.data = [];
  }

  push(text) {
    const buf = this.buf + text;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i];
      if (c !== '\n' && c !== '\r') continue;
      // A CR at the very end may be the first half of a CRLF.
      if (c === '\r' && i + 1 === buf.length) break;
      this.line(buf.slice(start, i));
      if (c === '\r' && buf[i + 1] === '\n') i++;
      start = i + 1;
    }
    this.buf = buf.slice(start);
  }

  line(l) {
    if (l === '') {
      if (this.data.length) {
        this.onEvent({ id: this.id, event: this.event || 'message', data: this.data.join('\n') });
      }
      this.data = [];
      this.event = '';
      return;
    }
    if (l[0] === ':') return; // a comment: the server's keep-alive
    const colon = l.indexOf(':');
    const field = colon < 0 ? l : l.slice(0, colon);
    let value = colon < 0 ? '' : l.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.event = value;
    else if (field === 'id' && !value.includes('\0')) this.id = value;
  }
}