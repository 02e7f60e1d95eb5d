import type { TLSSocket } from "node:tls";
import { encodeHeaders, HpackDecoder, HpackError, type HeaderList } from "./hpack.js";

/**
 * The client side of HTTP/2 (RFC 9113) over a TLS socket that has already negotiated "h2", for
 * unary gRPC calls: several streams at once, flow control both ways, HPACK, CONTINUATION,
 * padding, PING, SETTINGS, RST_STREAM and GOAWAY. No server push (disabled), no priorities.
 *
 * Why not node:http2: loading it and setting up its session costs the plugin 15-20 ms of every
 * one of notation's three process starts per signature; this file costs well under 1 ms.
 */

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

const enum FrameType {
  DATA = 0x0,
  HEADERS = 0x1,
  PRIORITY = 0x2,
  RST_STREAM = 0x3,
  SETTINGS = 0x4,
  PUSH_PROMISE = 0x5,
  PING = 0x6,
  GOAWAY = 0x7,
  WINDOW_UPDATE = 0x8,
  CONTINUATION = 0x9,
}

const END_STREAM = 0x1;
const ACK = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY_FLAG = 0x20;

/** HTTP/2 error codes (RFC 9113 §7) this side sends or interprets. */
export const H2Code = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  FRAME_SIZE_ERROR: 0x6,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  ENHANCE_YOUR_CALM: 0xb,
  INADEQUATE_SECURITY: 0xc,
} as const;

const SETTINGS_HEADER_TABLE_SIZE = 0x1;
const SETTINGS_ENABLE_PUSH = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE = 0x4;
const SETTINGS_MAX_FRAME_SIZE = 0x5;

const DEFAULT_WINDOW = 65_535;
const DEFAULT_MAX_FRAME = 16_384;
const MAX_WINDOW = 2 ** 31 - 1;
/** What this side lets the server send before it must wait for a WINDOW_UPDATE. */
const STREAM_RECEIVE_WINDOW = 4 * 1024 * 1024;
const CONNECTION_RECEIVE_WINDOW = 16 * 1024 * 1024;

/**
 * Why a stream failed. `refused`: the server never processed it (REFUSED_STREAM, GOAWAY above
 * it, a stream-id space used up), so it is safe to retry; `connection`: the connection broke.
 */
export type H2FailureKind = "refused" | "reset" | "connection" | "protocol" | "too-large";

export class H2StreamError extends Error {
  constructor(
    message: string,
    readonly kind: H2FailureKind,
    /** The HTTP/2 error code of a RST_STREAM or GOAWAY, when there was one. */
    readonly h2Code?: number,
    /** The socket's own error, for kind "connection". */
    cause?: Error,
  ) {
    super(message, cause ? { cause } : undefined);
    this.name = "H2StreamError";
  }
}

export interface H2Response {
  headers: HeaderList;
  data: Buffer;
  /** The trailing header block; absent in a "trailers-only" answer (everything in `headers`). */
  trailers: HeaderList | undefined;
}

export interface H2Request {
  response: Promise<H2Response>;
  /** Resets the stream (CANCEL); the response then rejects with `reason`. */
  cancel(reason: Error): void;
}

export interface H2SessionOptions {
  /** A response body above this is refused (kind "too-large"). Default 4 MiB, as gRPC's. */
  maxResponseBytes?: number;
}

interface Stream {
  id: number;
  headers: HeaderList | undefined;
  trailers: HeaderList | undefined;
  chunks: Buffer[];
  received: number;
  /** Received bytes not yet given back with a WINDOW_UPDATE. */
  unacked: number;
  sendWindow: number;
  /** Body bytes still to send. */
  pending: Buffer;
  resolve: (r: H2Response) => void;
  reject: (e: Error) => void;
}

interface Waiting {
  start: () => void;
  reject: (e: Error) => void;
}

export class H2Session {
  private readonly decoder = new HpackDecoder();
  private readonly streams = new Map<number, Stream>();
  private readonly waiting: Waiting[] = [];
  private readonly maxResponseBytes: number;
  private input: Buffer = Buffer.alloc(0);
  private nextStreamId = 1;
  private connSendWindow = DEFAULT_WINDOW;
  private peerInitialWindow = DEFAULT_WINDOW;
  private peerMaxFrame = DEFAULT_MAX_FRAME;
  private peerMaxStreams = Infinity;
  /**
   * Until the server's first SETTINGS, one stream at a time: its stream limit is not known yet
   * (RFC 9113 lets a client assume none, and a server with a low one would refuse the rest).
   * A plugin's one call goes out at once; further ones wait about a round trip at most.
   */
  private peerSettingsSeen = false;
  private connUnacked = 0;
  /** A header block being continued: its stream, flags and fragments so far. */
  private continuing: { streamId: number; flags: number; fragments: Buffer[] } | undefined;
  /** Set once the session may take no new stream (GOAWAY, error, close). */
  private ended: H2StreamError | undefined;

  constructor(
    private readonly socket: TLSSocket,
    o: H2SessionOptions = {},
  ) {
    this.maxResponseBytes = o.maxResponseBytes ?? 4 * 1024 * 1024;
    socket.on("data", (d: Buffer) => this.onData(d));
    socket.on("error", (e) => this.terminate(new H2StreamError(`connection error: ${e.message}`, "connection", undefined, e)));
    socket.on("close", () => this.terminate(new H2StreamError("the connection closed", "connection")));
    const settings = Buffer.alloc(18);
    settings.writeUInt16BE(SETTINGS_ENABLE_PUSH, 0);
    settings.writeUInt32BE(0, 2);
    settings.writeUInt16BE(SETTINGS_INITIAL_WINDOW_SIZE, 6);
    settings.writeUInt32BE(STREAM_RECEIVE_WINDOW, 8);
    settings.writeUInt16BE(SETTINGS_HEADER_TABLE_SIZE, 12);
    settings.writeUInt32BE(4096, 14);
    this.socket.cork();
    this.socket.write(PREFACE);
    this.writeFrame(FrameType.SETTINGS, 0, 0, settings);
    this.writeFrame(FrameType.WINDOW_UPDATE, 0, 0, uint32(CONNECTION_RECEIVE_WINDOW - DEFAULT_WINDOW));
    this.socket.uncork();
  }

  /** False once the session takes no new streams; the caller opens a new one. */
  get usable(): boolean {
    return this.ended === undefined && !this.socket.destroyed;
  }

  /**
   * Opens a stream with `headers` and sends `body` (END_STREAM on its last frame). Header names in
   * `sensitive` are sent "never indexed".
   */
  request(headers: HeaderList, body: Buffer, sensitive?: ReadonlySet<string>): H2Request {
    let stream: Stream | undefined;
    let cancelled: Error | undefined;
    let rejectEarly: (e: Error) => void = () => undefined;
    const response = new Promise<H2Response>((resolve, reject) => {
      rejectEarly = reject;
      const start = (): void => {
        if (cancelled) return;
        if (this.ended) return reject(this.ended);
        if (this.nextStreamId > MAX_WINDOW) {
          this.ended = new H2StreamError("the connection has used up its stream ids", "refused");
          return reject(this.ended);
        }
        let block: Buffer;
        try {
          block = encodeHeaders(headers, sensitive);
        } catch (e) {
          return reject(new H2StreamError((e as Error).message, "protocol"));
        }
        const id = this.nextStreamId;
        this.nextStreamId += 2;
        stream = { id, headers: undefined, trailers: undefined, chunks: [], received: 0, unacked: 0, sendWindow: this.peerInitialWindow, pending: body, resolve, reject };
        this.streams.set(id, stream);
        this.socket.cork();
        this.writeHeaderBlock(id, block, body.length === 0);
        this.flushStream(stream);
        this.socket.uncork();
      };
      if (this.ended) return reject(this.ended);
      if (this.canOpen()) start();
      else this.waiting.push({ start, reject });
    });
    const cancel = (reason: Error): void => {
      if (cancelled) return;
      cancelled = reason;
      if (stream && this.streams.get(stream.id) === stream) {
        this.streams.delete(stream.id);
        if (!this.socket.destroyed) this.writeFrame(FrameType.RST_STREAM, 0, stream.id, uint32(H2Code.CANCEL));
        this.startWaiting();
      }
      const i = this.waiting.findIndex((w) => w.reject === rejectEarly);
      if (i >= 0) this.waiting.splice(i, 1);
      rejectEarly(reason);
    };
    return { response, cancel };
  }

  /** Ends the session: GOAWAY, then the socket; streams still open fail as "connection". */
  close(): void {
    if (!this.socket.destroyed && this.ended === undefined) {
      const goaway = Buffer.alloc(8);
      goaway.writeUInt32BE(0, 0);
      goaway.writeUInt32BE(H2Code.NO_ERROR, 4);
      this.writeFrame(FrameType.GOAWAY, 0, 0, goaway);
    }
    this.terminate(new H2StreamError("the session was closed", "connection"));
    this.socket.end();
    this.socket.destroySoon();
  }

  // -------------------------------------------------------------------------------------------

  private writeFrame(type: FrameType, flags: number, streamId: number, payload: Buffer): void {
    const head = Buffer.allocUnsafe(9);
    head.writeUIntBE(payload.length, 0, 3);
    head[3] = type;
    head[4] = flags;
    head.writeUInt32BE(streamId, 5);
    this.socket.write(payload.length > 0 ? Buffer.concat([head, payload]) : head);
  }

  private writeHeaderBlock(id: number, block: Buffer, endStream: boolean): void {
    const first = block.subarray(0, this.peerMaxFrame);
    let rest = block.subarray(first.length);
    this.writeFrame(FrameType.HEADERS, (endStream ? END_STREAM : 0) | (rest.length === 0 ? END_HEADERS : 0), id, first);
    while (rest.length > 0) {
      const part = rest.subarray(0, this.peerMaxFrame);
      rest = rest.subarray(part.length);
      this.writeFrame(FrameType.CONTINUATION, rest.length === 0 ? END_HEADERS : 0, id, part);
    }
  }

  /** Sends as much of the stream's body as both windows allow. */
  private flushStream(s: Stream): void {
    while (s.pending.length > 0) {
      const n = Math.min(s.pending.length, this.peerMaxFrame, this.connSendWindow, s.sendWindow);
      if (n <= 0) return;
      const part = s.pending.subarray(0, n);
      s.pending = s.pending.subarray(n);
      this.connSendWindow -= n;
      s.sendWindow -= n;
      this.writeFrame(FrameType.DATA, s.pending.length === 0 ? END_STREAM : 0, s.id, part);
    }
  }

  private flushAll(): void {
    this.socket.cork();
    for (const s of this.streams.values()) this.flushStream(s);
    this.socket.uncork();
  }

  private canOpen(): boolean {
    return this.streams.size < (this.peerSettingsSeen ? this.peerMaxStreams : 1);
  }

  private startWaiting(): void {
    while (this.waiting.length > 0 && this.canOpen() && !this.ended) this.waiting.shift()!.start();
  }

  private onData(d: Buffer): void {
    this.input = this.input.length === 0 ? d : Buffer.concat([this.input, d]);
    try {
      while (this.input.length >= 9) {
        const length = this.input.readUIntBE(0, 3);
        if (length > DEFAULT_MAX_FRAME) throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, `a ${length}-byte frame (the limit is ${DEFAULT_MAX_FRAME})`);
        if (this.input.length < 9 + length) return;
        const type = this.input[3]!;
        const flags = this.input[4]!;
        const streamId = this.input.readUInt32BE(5) & 0x7fffffff;
        const payload = this.input.subarray(9, 9 + length);
        this.input = this.input.subarray(9 + length);
        this.onFrame(type, flags, streamId, payload);
      }
    } catch (e) {
      const err = e instanceof ConnectionError ? e : new ConnectionError(e instanceof HpackError ? H2Code.COMPRESSION_ERROR : H2Code.PROTOCOL_ERROR, (e as Error).message);
      this.connectionError(err);
    }
  }

  private onFrame(type: number, flags: number, streamId: number, payload: Buffer): void {
    if (this.continuing && type !== FrameType.CONTINUATION) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "a header block was interrupted by another frame");
    switch (type) {
      case FrameType.DATA:
        return this.onDataFrame(flags, streamId, payload);
      case FrameType.HEADERS: {
        if (streamId === 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "HEADERS on stream 0");
        let p = unpad(flags, payload);
        if (flags & PRIORITY_FLAG) {
          if (p.length < 5) throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, "short HEADERS priority fields");
          p = p.subarray(5);
        }
        if (flags & END_HEADERS) return this.onHeaderBlock(streamId, flags, p);
        this.continuing = { streamId, flags, fragments: [Buffer.from(p)] };
        return;
      }
      case FrameType.CONTINUATION: {
        const c = this.continuing;
        if (!c || c.streamId !== streamId) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "CONTINUATION without a header block to continue");
        c.fragments.push(Buffer.from(payload));
        if (c.fragments.reduce((n, f) => n + f.length, 0) > 1024 * 1024) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "header block larger than 1 MiB");
        if (flags & END_HEADERS) {
          this.continuing = undefined;
          this.onHeaderBlock(streamId, c.flags, Buffer.concat(c.fragments));
        }
        return;
      }
      case FrameType.RST_STREAM: {
        if (streamId === 0 || payload.length !== 4) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "malformed RST_STREAM");
        const s = this.streams.get(streamId);
        if (!s) return;
        const code = payload.readUInt32BE(0);
        this.finishStream(s, new H2StreamError(`the server reset the stream (${h2CodeName(code)})`, code === H2Code.REFUSED_STREAM ? "refused" : "reset", code));
        return;
      }
      case FrameType.SETTINGS:
        return this.onSettings(flags, streamId, payload);
      case FrameType.PUSH_PROMISE:
        throw new ConnectionError(H2Code.PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled");
      case FrameType.PING:
        if (streamId !== 0 || payload.length !== 8) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "malformed PING");
        if (!(flags & ACK)) this.writeFrame(FrameType.PING, ACK, 0, Buffer.from(payload));
        return;
      case FrameType.GOAWAY:
        return this.onGoaway(streamId, payload);
      case FrameType.WINDOW_UPDATE:
        return this.onWindowUpdate(streamId, payload);
      default:
        // PRIORITY and unknown frame types are ignored (§5.5).
        return;
    }
  }

  private onDataFrame(flags: number, streamId: number, payload: Buffer): void {
    if (streamId === 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "DATA on stream 0");
    // Padding counts against flow control too: the whole frame payload is given back.
    this.connUnacked += payload.length;
    if (this.connUnacked >= CONNECTION_RECEIVE_WINDOW / 4) {
      this.writeFrame(FrameType.WINDOW_UPDATE, 0, 0, uint32(this.connUnacked));
      this.connUnacked = 0;
    }
    const s = this.streams.get(streamId);
    if (!s) return; // a stream this side already cancelled
    if (!s.headers) return this.finishStream(s, new H2StreamError("DATA before the response headers", "protocol"));
    const data = unpad(flags, payload);
    s.received += data.length;
    if (s.received > this.maxResponseBytes) {
      this.streams.delete(s.id);
      this.writeFrame(FrameType.RST_STREAM, 0, s.id, uint32(H2Code.CANCEL));
      s.reject(new H2StreamError(`the response is larger than ${this.maxResponseBytes} bytes`, "too-large"));
      this.startWaiting();
      return;
    }
    if (data.length > 0) s.chunks.push(Buffer.from(data));
    s.unacked += payload.length;
    if (flags & END_STREAM) return this.finishStream(s);
    if (s.unacked >= STREAM_RECEIVE_WINDOW / 4) {
      this.writeFrame(FrameType.WINDOW_UPDATE, 0, s.id, uint32(s.unacked));
      s.unacked = 0;
    }
  }

  private onHeaderBlock(streamId: number, flags: number, block: Buffer): void {
    // Every block is decoded, even for a stream that is gone: they share the HPACK table.
    const list = this.decoder.decode(block);
    const s = this.streams.get(streamId);
    if (!s) return;
    if (!s.headers) s.headers = list;
    else if (!s.trailers && flags & END_STREAM) s.trailers = list;
    else return this.finishStream(s, new H2StreamError("a header block after the trailers, or trailers without END_STREAM", "protocol"));
    if (flags & END_STREAM) this.finishStream(s);
  }

  private onSettings(flags: number, streamId: number, payload: Buffer): void {
    if (streamId !== 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "SETTINGS on a stream");
    if (flags & ACK) {
      if (payload.length !== 0) throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload");
      return;
    }
    if (payload.length % 6 !== 0) throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6");
    for (let i = 0; i < payload.length; i += 6) {
      const id = payload.readUInt16BE(i);
      const value = payload.readUInt32BE(i + 2);
      if (id === SETTINGS_INITIAL_WINDOW_SIZE) {
        if (value > MAX_WINDOW) throw new ConnectionError(H2Code.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1");
        const delta = value - this.peerInitialWindow;
        this.peerInitialWindow = value;
        for (const s of this.streams.values()) {
          s.sendWindow += delta;
          if (s.sendWindow > MAX_WINDOW) throw new ConnectionError(H2Code.FLOW_CONTROL_ERROR, "a stream window above 2^31-1");
        }
      } else if (id === SETTINGS_MAX_FRAME_SIZE) {
        if (value < DEFAULT_MAX_FRAME || value > 16_777_215) throw new ConnectionError(H2Code.PROTOCOL_ERROR, `MAX_FRAME_SIZE ${value} out of range`);
        this.peerMaxFrame = value;
      } else if (id === SETTINGS_MAX_CONCURRENT_STREAMS) {
        this.peerMaxStreams = value;
      } else if (id === SETTINGS_ENABLE_PUSH && value > 1) {
        throw new ConnectionError(H2Code.PROTOCOL_ERROR, "ENABLE_PUSH neither 0 nor 1");
      }
      // HEADER_TABLE_SIZE bounds the encoder's table; this encoder keeps none. Others: ignored.
    }
    this.peerSettingsSeen = true;
    this.writeFrame(FrameType.SETTINGS, ACK, 0, Buffer.alloc(0));
    this.flushAll();
    this.startWaiting();
  }

  private onGoaway(streamId: number, payload: Buffer): void {
    if (streamId !== 0 || payload.length < 8) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "malformed GOAWAY");
    const last = payload.readUInt32BE(0) & 0x7fffffff;
    const code = payload.readUInt32BE(4);
    const debug = payload.subarray(8).toString("utf8").replace(/[^\x20-\x7e]/g, "").slice(0, 200);
    const why = `the server is closing the connection (GOAWAY ${h2CodeName(code)}${debug ? `: ${debug}` : ""})`;
    this.ended ??= new H2StreamError(why, "refused", code);
    // Streams above `last` were never processed: safe to retry elsewhere.
    for (const s of [...this.streams.values()]) if (s.id > last) this.finishStream(s, new H2StreamError(why, "refused", code));
    for (const w of this.waiting.splice(0)) w.reject(this.ended);
    if (this.streams.size === 0) this.socket.end();
  }

  private onWindowUpdate(streamId: number, payload: Buffer): void {
    if (payload.length !== 4) throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, "malformed WINDOW_UPDATE");
    const inc = payload.readUInt32BE(0) & 0x7fffffff;
    if (streamId === 0) {
      if (inc === 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
      this.connSendWindow += inc;
      if (this.connSendWindow > MAX_WINDOW) throw new ConnectionError(H2Code.FLOW_CONTROL_ERROR, "connection window above 2^31-1");
      this.flushAll();
      return;
    }
    const s = this.streams.get(streamId);
    if (!s) return;
    if (inc === 0 || s.sendWindow + inc > MAX_WINDOW) {
      this.writeFrame(FrameType.RST_STREAM, 0, s.id, uint32(inc === 0 ? H2Code.PROTOCOL_ERROR : H2Code.FLOW_CONTROL_ERROR));
      this.finishStream(s, new H2StreamError("invalid stream WINDOW_UPDATE from the server", "protocol"));
      return;
    }
    s.sendWindow += inc;
    this.socket.cork();
    this.flushStream(s);
    this.socket.uncork();
  }

  /** Ends a stream: resolves it (END_STREAM seen) or rejects it with `error`. */
  private finishStream(s: Stream, error?: H2StreamError): void {
    if (this.streams.get(s.id) !== s) return;
    this.streams.delete(s.id);
    if (error) {
      s.reject(error);
    } else {
      // The server answered before the whole request was sent (an early error): stop sending.
      if (s.pending.length > 0 && !this.socket.destroyed) this.writeFrame(FrameType.RST_STREAM, 0, s.id, uint32(H2Code.NO_ERROR));
      s.resolve({ headers: s.headers ?? [], data: s.chunks.length === 1 ? s.chunks[0]! : Buffer.concat(s.chunks), trailers: s.trailers });
    }
    this.startWaiting();
    if (this.ended && this.streams.size === 0 && !this.socket.destroyed) this.socket.end();
  }

  private connectionError(e: ConnectionError): void {
    if (!this.socket.destroyed) {
      const goaway = Buffer.alloc(8);
      goaway.writeUInt32BE(Math.max(0, this.nextStreamId - 2), 0);
      goaway.writeUInt32BE(e.code, 4);
      this.writeFrame(FrameType.GOAWAY, 0, 0, goaway);
    }
    this.terminate(new H2StreamError(`HTTP/2 protocol error from the server: ${e.message}`, "protocol", e.code));
    this.socket.destroySoon();
  }

  private terminate(e: H2StreamError): void {
    this.ended ??= e;
    for (const s of [...this.streams.values()]) this.finishStream(s, e);
    for (const w of this.waiting.splice(0)) w.reject(e);
  }
}

class ConnectionError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

function uint32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v, 0);
  return b;
}

/** Strips the Pad Length byte and the padding of a PADDED frame. */
function unpad(flags: number, payload: Buffer): Buffer {
  if (!(flags & PADDED)) return payload;
  if (payload.length < 1) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "PADDED frame without a pad length");
  const pad = payload[0]!;
  if (pad >= payload.length) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "padding longer than the frame");
  return payload.subarray(1, payload.length - pad);
}

const CODE_NAMES = Object.fromEntries(Object.entries(H2Code).map(([k, v]) => [v, k])) as Record<number, string>;

export function h2CodeName(code: number): string {
  return CODE_NAMES[code] ?? `error code 0x${code.toString(16)}`;
}
