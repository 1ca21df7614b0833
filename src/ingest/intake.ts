/**
 * One request's way in, the same for every source: memory reserved for the bytes that arrived
 * (never for the bytes promised), the body read within its limit and deadline, every refusal
 * answered with the status and headers its error carries, and the reservation released on every
 * path. A source gets the body and answers; it never sees a budget or a body error.
 */
import { readBody, readBodyText, BodyAbortedError, BodyOverloadError, SMALL_BODY_BYTES } from "./body.ts";
import { HttpError, respond } from "./http-error.ts";
import type { InFlightLimiter } from "./overload.ts";
import { log } from "../util/log.ts";

/** Memory held for one body in one or more budgets: grown as the body arrives, each budget released once. */
export class Reservation {
  #holds: { budget: InFlightLimiter; bytes: number }[] = [];

  /** `bytes` in every budget, in order, or in none (undefined) when one refuses. */
  static take(budgets: readonly InFlightLimiter[], bytes: number): Reservation | undefined {
    const r = new Reservation();
    for (const budget of budgets) {
      if (!budget.tryAcquire(bytes)) {
        r.close();
        return undefined;
      }
      r.#holds.push({ budget, bytes });
    }
    return r;
  }

  /** Told the body's size so far; false when a budget refuses it (the sender is answered 429). */
  grow(size: number): boolean {
    for (const h of this.#holds) {
      if (size <= h.bytes) continue;
      if (!h.budget.tryGrow(size - h.bytes)) return false;
      h.bytes = size;
    }
    return true;
  }

  /** Gives back one budget's share early (the keyless budget, once the key is known). */
  release(budget: InFlightLimiter): void {
    const i = this.#holds.findIndex((h) => h.budget === budget);
    if (i < 0) return;
    budget.release(this.#holds[i]!.bytes);
    this.#holds.splice(i, 1);
  }

  /** Gives back everything still held; safe to call more than once. */
  close(): void {
    for (const h of this.#holds) h.budget.release(h.bytes);
    this.#holds = [];
  }
}

/** What one source asks of the intake for one request. */
export interface IntakeRequest {
  /** Largest body, after decompression; beyond it, 413. */
  limit: number;
  /** The whole body must arrive within this; beyond it, 503 and the connection is closed. */
  timeoutMs: number;
  /** The Retry-After of a 503. */
  retryAfterSeconds: number;
  /** Budgets held before the node's own (the budget of requests not yet authenticated). */
  budgets?: readonly InFlightLimiter[];
  /** See {@link BodyReadOptions.firstByte}. */
  firstByte?: (byte: number) => boolean;
  /** Headers on every refusal (CORS), asked for only when there is one. */
  refusalHeaders?: () => Record<string, string>;
  /** A source's own wording of a refusal (e.g. a 401 where a key was expected). */
  refine?: (e: HttpError) => HttpError;
  /** How an unexpected failure is logged: a message and the fields that say where. */
  failure: { message: string; fields?: Record<string, unknown> };
}

/** Answers the source gives and the intake does not: the source's own responses. */
export type Use<B> = (body: B, held: Reservation) => Promise<Response> | Response;

/** The node's budget for request bodies being worked on, shared by every source. */
export class Intake {
  constructor(readonly budget: InFlightLimiter) {}

  /** The body as strict UTF-8 text. */
  text(request: Request, o: IntakeRequest, use: Use<string>): Promise<Response> {
    return this.#receive(request, o, async (held) => {
      const text = await readBodyText(request, this.#readOptions(o, held));
      // Characters, not bytes, for an inflated body: close enough for a memory bound.
      if (!held.grow(text.length)) throw new BodyOverloadError();
      return use(text, held);
    });
  }

  /** The body's bytes, inflated. */
  bytes(request: Request, o: IntakeRequest, use: Use<Uint8Array>): Promise<Response> {
    return this.#receive(request, o, async (held) => use(await readBody(request, this.#readOptions(o, held)), held));
  }

  #readOptions(o: IntakeRequest, held: Reservation) {
    return {
      limit: o.limit,
      timeoutMs: o.timeoutMs,
      retryAfterSeconds: o.retryAfterSeconds,
      grow: (size: number) => held.grow(size),
      ...(o.firstByte && { firstByte: o.firstByte }),
    };
  }

  async #receive(request: Request, o: IntakeRequest, run: (held: Reservation) => Promise<Response>): Promise<Response> {
    // A sender that declares a large Content-Length and then stalls (slow loris) holds at most SMALL_BODY_BYTES.
    const declared = Number(request.headers.get("content-length") ?? 0) || SMALL_BODY_BYTES;
    const budgets = o.budgets ? [...o.budgets, this.budget] : [this.budget];
    const held = Reservation.take(budgets, Math.min(declared, SMALL_BODY_BYTES, o.limit));
    if (!held) return refuse(new BodyOverloadError(), o);
    try {
      return await run(held);
    } catch (e) {
      if (e instanceof HttpError) {
        if (e instanceof BodyAbortedError) log.debug("request body ended early", { error: e.message });
        return refuse(e, o);
      }
      log.error(o.failure.message, { ...o.failure.fields, error: String((e as Error)?.stack ?? e) });
      return respond(503, { error: "internal error; retry later" }, { "Retry-After": String(o.retryAfterSeconds) });
    } finally {
      held.close();
    }
  }
}

function refuse(error: HttpError, o: IntakeRequest): Response {
  const e = o.refine ? o.refine(error) : error;
  return respond(e.status, { error: e.message }, e.headers, o.refusalHeaders ? o.refusalHeaders() : {});
}
