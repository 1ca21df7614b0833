/**
 * The wire between the node and a sandbox process: length-prefixed JSON frames over the child's
 * stdin (node → sandbox) and stdout (sandbox → node). Both ends treat the other's bytes as untrusted:
 * a frame over the size limit or that is not JSON ends the conversation (the node then kills the
 * process), it never allocates what the peer announces.
 */
import type { TransformLimits, TransformResult } from "./types.ts";

export type SandboxKind = "javascript" | "python";

export type ToSandbox =
  | { t: "init"; kind: SandboxKind; source: string; limits: TransformLimits; cpuSeconds: number; unguarded: boolean }
  | { t: "batch"; id: number; events: unknown[] };

export type FromSandbox =
  | { t: "ready" }
  | { t: "loadError"; message: string; config: boolean }
  | { t: "result"; id: number; results: TransformResult[] }
  /** The process used most of its CPU-time limit: the node replaces it before the next batch. */
  | { t: "recycle" };

/** A batch frame carries at most a few MiB of events (the node cuts batches); this leaves room. */
export const maxFrameBytes = 256 * 1024 * 1024;

export function encodeFrame(message: ToSandbox | FromSandbox): Uint8Array {
  const body = Buffer.from(JSON.stringify(message), "utf8");
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32LE(body.length, 0);
  body.copy(out, 4);
  return out;
}

/** A batch frame from events already in JSON text: the node encodes each event once. */
export function encodeBatchFrame(id: number, eventsJson: string[]): Uint8Array {
  const body = Buffer.from(`{"t":"batch","id":${id},"events":[${eventsJson.join(",")}]}`, "utf8");
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32LE(body.length, 0);
  body.copy(out, 4);
  return out;
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
      if (length > maxFrameBytes) throw new FrameError(`frame of ${length} bytes is over the ${maxFrameBytes} limit`);
      if (this.#buffered < 4 + length) break;
      const all = this.#take(4 + length);
      try {
        frames.push(JSON.parse(all.toString("utf8", 4)));
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
