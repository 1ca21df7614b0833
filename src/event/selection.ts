import { ExpressionTimeoutError, compileFilter, type EventFilter } from "../expr/index.ts";
import { consentGranted } from "./consent.ts";
import { KIND_HEADER, type RecordKind, recordKind } from "./envelope.ts";

type Json = Record<string, unknown>;

/**
 * Krenalis's preset for "Import users" (identify events, or any event that carries traits),
 * plus alias: it carries no traits but links two identities.
 */
export const DEFAULT_USERS_FILTER = `type in ["identify", "alias"] or $exists(traits)`;

/** The part of a pipeline's configuration that decides which events reach it. */
export interface SelectedBy {
  import: string;
  filter?: string;
  consents?: string[];
}

/** The filter a pipeline runs: its own, or the users preset. */
export const filterOf = (p: SelectedBy): string | undefined =>
  p.filter ?? (p.import === "users" ? DEFAULT_USERS_FILTER : undefined);

/** Which records reach a pipeline: their kind, its filter, then its required consent purposes. */
export interface Selection {
  filter: EventFilter;
  consents?: string[];
  /** The kind of record the pipeline's stage takes (a raw connection's stream holds both). */
  takes: RecordKind;
}

/** A pipeline's selection, its filter compiled (throws FilterCompileError). */
export function selectionOf(p: SelectedBy, takes: RecordKind = "events"): Selection {
  return { filter: compileFilter(filterOf(p)), consents: p.consents, takes };
}

export type Verdict = { keep: true } | { keep: false; why: "filter" | "consent"; reason?: string };

/** The decision for one record of the selection's kind; throws when the filter fails at run time. */
export function decide(e: Json, sel: Selection): Verdict {
  if (!sel.filter.test(e))
    return {
      keep: false,
      why: "filter",
      reason: sel.filter.source ? `filter ${sel.filter.source} is false` : undefined,
    };
  if (sel.consents?.length && !consentGranted(e, sel.consents))
    return { keep: false, why: "consent", reason: `consent missing for ${sel.consents.join(", ")}` };
  return { keep: true };
}

/**
 * The users forgotten (src/pipeline/users/forgotten.ts keeps it current in every pipeline process):
 * their events are dropped before any filter, by every pipeline, live or replayed.
 */
export interface ForgottenCheck {
  isForgotten(e: Json): boolean;
}
let forgotten: ForgottenCheck | undefined;
/**
 * Whether a record holds a forgotten user's data: an event (`userId`, `anonymousId`) or a row of
 * `events` or `users` (`user_id`, `anonymous_id`, `anonymous_ids`), as dead letters hold them.
 */
export function holdsForgottenUser(r: Json): boolean {
  if (!forgotten) return false;
  if (forgotten.isForgotten(r)) return true;
  const ids = Array.isArray(r.anonymous_ids) ? r.anonymous_ids : [r.anonymous_id];
  return [r.user_id, ...ids].some(
    (id, i) => typeof id === "string" && forgotten!.isForgotten(i === 0 ? { userId: id } : { anonymousId: id }),
  );
}

export function setForgottenIds(check: ForgottenCheck | undefined): void {
  forgotten = check;
}

/** What a selection counts (PipelineStats has these). */
export interface SelectionCounters {
  received: number;
  filteredOut: number;
  consentFailed: number;
  /** Events of a forgotten user, dropped (counted apart from received). */
  forgotten?: number;
  recordError(error: string, messageId?: string): void;
  onOutcome?: (messageId: string, outcome: "filtered" | "kept", reason?: string) => void;
}

/**
 * After an event whose filter ran out of time the node's loop gets a turn before the next event: a
 * message full of hostile events costs the pipeline the limit per event, but never holds HTTP
 * answers or other pipelines for longer than one limit.
 */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** The part of a stream message selection reads. */
export interface StoredMessage {
  json<T>(): T;
  seq: number;
  headers?: { get(k: string): string };
}

/**
 * The records of one stream message that a pipeline keeps, appended to `into`, with every decision
 * counted and, when the debugger listens, recorded per event. The live pipelines, replays, `tail
 * --pipeline` and `check --explain` all decide with `decide`, so each decides as the pipeline does.
 */
export async function selectEvents(
  m: StoredMessage,
  sel: Selection,
  stats: SelectionCounters,
  into: Json[],
): Promise<void> {
  let events: Json[];
  try {
    events = m.json<Json[]>();
  } catch (err) {
    // Not written by Tributary (someone published by hand): keep it visible, never block on it.
    stats.recordError(`unreadable stream message ${m.seq}: ${(err as Error).message}`);
    return;
  }
  const header = m.headers?.get(KIND_HEADER) || undefined;
  for (const e of Array.isArray(events) ? events : [events]) {
    if (recordKind(header, e) !== sel.takes) continue;
    const id = e.messageId as string;
    if (forgotten?.isForgotten(e)) {
      stats.forgotten = (stats.forgotten ?? 0) + 1;
      stats.onOutcome?.(id, "filtered", "the user was forgotten");
      continue;
    }
    stats.received++;
    let verdict: Verdict;
    try {
      verdict = decide(e, sel);
    } catch (err) {
      stats.recordError(`filter failed: ${(err as Error).message}`, id);
      if (err instanceof ExpressionTimeoutError) await yieldToLoop();
      continue;
    }
    if (!verdict.keep) {
      if (verdict.why === "filter") stats.filteredOut++;
      else stats.consentFailed++;
      stats.onOutcome?.(id, "filtered", verdict.reason);
      continue;
    }
    stats.onOutcome?.(id, "kept");
    into.push(e);
  }
}
