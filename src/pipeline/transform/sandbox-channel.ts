/**
 * The wire between the node and a sandbox process: length-prefixed JSON frames over the child's
 * stdin (node → sandbox) and stdout (sandbox → node). Both ends treat the other's bytes as untrusted:
 * a frame over the size limit or that is not JSON ends the conversation (the node then kills the
 * process), it never allocates what the peer announces.
 */
import type { TransformLimits, TransformResult } from "./types.ts";

export type SandboxKind = "javascript" | "python";

export type ToSandbox = {
  t: "init";
  kind: SandboxKind;
  source: string;
  limits: TransformLimits;
  cpuSeconds: number;
  unguarded: boolean;
};

/** A batch: its id and each event's JSON text (newline-free: JSON.stringify escapes newlines). */
export interface BatchFrame {
  id: number;
  events: string[];
}

export type FromSandbox =
  | { t: "ready" }
  | { t: "loadError"; message: string; config: boolean }
  | { t: "result"; id: number; results: TransformResult[] }
  /** The process used most of its CPU-time limit: the node replaces it before the next batch. */
  | { t: "recycle" };

/** Frames are cut at 128 events or 1 MiB (one event may be 256 KiB): this is room, not a target, and bounds what a compromised sandbox can make the node buffer. */
export const maxFrameBytes = 64 * 1024 * 1024;

/** A frame's first byte after its length: a JSON message, or a batch (id line + one event per line). */
const JSON_FRAME = 0x4a; // "J"
const BATCH_FRAME = 0x42; // "B"

function frame(kind: number, text: string): Uint8Array {
  const length = Buffer.byteLength(text, "utf8");
  const out = Buffer.allocUnsafe(5 + length);
  out.writeUInt32LE(length + 1, 0);
  out[4] = kind;
  out.write(text, 5, "utf8");
  return out;
}

export function encodeFrame(message: ToSandbox | FromSandbox): Uint8Array {
  return frame(JSON_FRAME, JSON.stringify(message));
}

/** A batch frame from events already in JSON text: encoded once by the node, parsed once (or never) by the sandbox. */
export function encodeBatchFrame(id: number, eventsJson: string[]): Uint8Array {
  return frame(BATCH_FRAME, eventsJson.length ? `${id}\n${eventsJson.join("\n")}` : String(id));
}

export class FrameError extends Error {
  readonly code = "SANDBOX_FRAME";
}

/** Accumulates bytes and yields whole frames; throws FrameError on a frame no honest peer sends. */
export class FrameReader {
  #chunks: Buffer[] = [];
  #buffered = 0;

  push(chunk: Uint8Array): unknown[] {
    this.#chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    this.#buffered += chunk.byteLength;
    const frames: unknown[] = [];
    for (;;) {
      if (this.#buffered < 4) break;
      const head = this.#peek(4);
      const length = head.readUInt32LE(0);
      if (length > maxFrameBytes || length < 1) throw new FrameError(`frame of ${length} bytes is outside the limits`);
      if (this.#buffered < 4 + length) break;
      const all = this.#take(4 + length);
      const text = all.toString("utf8", 5);
      if (all[4] === BATCH_FRAME) {
        const lines = text.split("\n");
        const id = Number(lines[0]);
        if (!Number.isSafeInteger(id)) throw new FrameError("batch frame without an id");
        frames.push({ id, events: lines.length > 1 ? lines.slice(1) : [] } satisfies BatchFrame);
        continue;
      }
      if (all[4] !== JSON_FRAME) throw new FrameError(`unknown frame type ${all[4]}`);
      try {
        frames.push(JSON.parse(text));
      } catch (e) {
        throw new FrameError(`frame is not JSON: ${(e as Error).message}`);
      }
    }
    return frames;
  }

  #peek(n: number): Buffer {
    if (this.#chunks[0]!.length < n) this.#chunks = [Buffer.concat(this.#chunks)];
    return this.#chunks[0]!;
  }

  #take(n: number): Buffer {
    const joined = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    const out = joined.subarray(0, n);
    const rest = joined.subarray(n);
    this.#chunks = rest.length > 0 ? [rest] : [];
    this.#buffered = rest.length;
    return out;
  }
}
