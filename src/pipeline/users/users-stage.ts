import type { Warehouse } from "../../sink/clickhouse/server.ts";
import { quoteIdent, quoteString } from "../../sink/clickhouse/server.ts";
import type { PipelineStats } from "../stats.ts";
import { deadLetterRefused, type DeadLetterSink } from "../refused-events.ts";
import type { Stage } from "../stage.ts";
import type { SandboxedTransform } from "../transform/types.ts";
import { ModelCheck, ModelViolation, datetimeRange, timeCell, toCell, type CustomerModel } from "./customer-model.ts";
import type { ProfileState, ProfileStore, ProfileUpdate } from "./profiles.ts";
import { NO_IDENTIFIERS, type IdentityRules } from "./identity-rules.ts";
import { SourceStore, type SourceEvent } from "./sources.ts";
import { identityRow, profileMapRows } from "./identities-table.ts";

type Json = Record<string, unknown>;

/** The users preset lives with the rest of event selection; re-exported for its old importers. */
export { DEFAULT_USERS_FILTER } from "../../event/selection.ts";

const str = (v: unknown) => (typeof v === "string" && v !== "" ? v : undefined);
const iso = (ms: number) => new Date(ms).toISOString();

/** A users row: the profile's whole state at `revision`. */
export function userRow(s: ProfileState, model: CustomerModel, w: Warehouse): Json {
  const p = s.profile;
  const f = w.features;
  // Event times were checked against the range when they were applied; a profile stored before that is clamped.
  const { min, max } = datetimeRange(f);
  const time = (ms: number) => timeCell(Math.min(max, Math.max(min, Number.isFinite(ms) ? ms : p.updatedAt)), f);
  const row: Json = {
    profile_id: p.id,
    user_id: p.userId ?? null,
    anonymous_ids: p.anonymousIds,
    first_seen_at: time(p.firstSeen === Number.MAX_SAFE_INTEGER ? p.updatedAt : p.firstSeen),
    last_seen_at: time(p.lastSeen || p.updatedAt),
    updated_at: time(p.updatedAt),
    anonymous_ids_dropped: p.anonymousIdsDropped ?? 0,
    _version: s.revision,
    _deleted: p.mergedInto ? 1 : 0,
  };
  for (const [name, type] of Object.entries(model)) row[name] = toCell(type, p.props[name]?.v, f);
  return row;
}

export type { DeadLetterSink, RefusedEventLetter } from "../refused-events.ts";

/**
 * "Import users into warehouse": the transformation turns each kept event into Customer Model
 * properties, checked against the model; identity resolution folds them into profiles; every
 * profile the batch touched is written to `users` as its new state.
 *
 * Failures are isolated per event: an event whose transformation fails, whose output breaks the
 * model, or whose profile update breaks a limit (README "Users", Limits) is dead-lettered with the
 * reason and recorded among the pipeline's errors, and the rest of the batch lands. A users row is
 * always insertable (toCell gives null for a stored value that no longer fits its column), so no
 * stored state can make a later batch fail.
 */
export class UsersStage implements Stage {
  readonly kind = "users";
  /** Profiles resolve once per batch, and a batch's identities are written once its users rows are. */
  readonly feed = "batch";
  readonly table = "users";
  readonly takes = "events";
  #merged: string[] = [];
  /** identities and profile_map rows of the batch, written once its users rows are stored. */
  #identityRows: Json[] = [];
  #mapRows: Json[] = [];
  readonly #sources?: SourceStore;
  #disposed = false;
  readonly #check: ModelCheck;
  readonly #range: { min: number; max: number };

  constructor(
    readonly pipeline: string,
    readonly transform: SandboxedTransform,
    readonly model: CustomerModel,
    readonly profiles: ProfileStore,
    readonly warehouse: Warehouse,
    readonly connection = "",
    readonly deadLetters?: DeadLetterSink,
    /** The Customer Model file's identifiers (config `identity`, identity-rules.ts rulesOf). */
    readonly rules: IdentityRules = NO_IDENTIFIERS,
  ) {
    this.#check = new ModelCheck(model, warehouse.features);
    this.#range = datetimeRange(warehouse.features);
    if (profiles.sources) this.#sources = new SourceStore(profiles.sources);
  }

  async toRows(events: Json[], stats: PipelineStats): Promise<Json[]> {
    if (!events.length) return [];
    const results = await this.transform.transformBatch(events);
    const updates: ProfileUpdate[] = [];
    const sources: Json[] = [];
    const refused: { event: Json; reason: string }[] = [];
    events.forEach((e, i) => {
      const messageId = String(e.messageId);
      const r = results[i]!;
      if (!r.ok) return refused.push({ event: e, reason: `transformation failed: ${r.error}` });
      const value = r.value ?? {};
      try {
        this.#check.assert(value);
      } catch (err) {
        if (!(err instanceof ModelViolation)) throw err;
        return refused.push({ event: e, reason: `${err.message} (messageId ${messageId})` });
      }
      const userId = str(e.userId);
      const anonymousId = str(e.anonymousId);
      if (userId === undefined && anonymousId === undefined)
        return refused.push({ event: e, reason: "the event has neither userId nor anonymousId" });
      const parsed = Date.parse(String(e.timestamp ?? e.receivedAt));
      const timestamp = Number.isNaN(parsed) ? Date.now() : parsed;
      if (timestamp < this.#range.min || timestamp > this.#range.max) {
        return refused.push({
          event: e,
          reason: `timestamp ${String(e.timestamp ?? e.receivedAt).slice(0, 40)} is outside the range the users table stores (${iso(this.#range.min)} .. ${iso(this.#range.max)})`,
        });
      }
      updates.push({
        userId,
        anonymousId,
        previousId: e.type === "alias" ? str(e.previousId) : undefined,
        timestamp,
        messageId,
        props: value,
      });
      sources.push(e);
      stats.transformed++;
      stats.onOutcome?.(messageId, "transformed");
    });
    const { states, refused: notApplied, targets, links } = await this.profiles.apply(updates, this.rules);
    for (const r of notApplied) refused.push({ event: sources[r.index]!, reason: r.reason });
    await this.#recordIdentities(updates, targets, links);
    const rows: Json[] = [];
    for (const s of states) {
      if (s.profile.mergedInto) this.#merged.push(s.profile.id);
      rows.push(userRow(s, this.model, this.warehouse));
    }
    await this.#deadLetter(refused, stats);
    return rows;
  }

  /** Folds the applied updates into their source identities; their rows are written after the users rows. */
  async #recordIdentities(
    updates: ProfileUpdate[],
    targets: (string | undefined)[],
    links: Parameters<typeof profileMapRows>[0],
  ): Promise<void> {
    const now = Date.now();
    this.#mapRows.push(...profileMapRows(links, this.warehouse.features, now));
    if (!this.#sources) return;
    const events: SourceEvent[] = [];
    updates.forEach((u, i) => {
      const profileId = targets[i];
      if (profileId !== undefined) events.push({ ...u, profileId });
    });
    for (const { record, revision } of await this.#sources.record(this.connection, this.pipeline, events))
      this.#identityRows.push(identityRow(record, revision, this.rules, this.warehouse.features, now));
  }

  /** Stored before the messages are acknowledged, so a refused event is never lost. */
  #deadLetter(refused: { event: Json; reason: string }[], stats: PipelineStats): Promise<void> {
    const to = { connection: this.connection, pipeline: this.pipeline, table: this.table };
    return deadLetterRefused(refused, { ...to, sink: this.deadLetters, disposed: () => this.#disposed }, stats);
  }

  /** Before ReplacingMergeTree had is_deleted (23.2), merged-away profiles are deleted by a mutation. */
  async afterInsert(): Promise<void> {
    for (const [table, rows] of [
      ["identities", this.#identityRows],
      ["profile_map", this.#mapRows],
    ] as const) {
      if (!rows.length) continue;
      const name = `${quoteIdent(this.warehouse.database)}.${table}`;
      if (this.warehouse.insertRows) await this.warehouse.insertRows(name, rows);
      else await this.warehouse.client.insert({ table: name, values: rows, format: "JSONEachRow" });
    }
    this.#identityRows = [];
    this.#mapRows = [];
    if (this.warehouse.features.replacingIsDeleted || !this.#merged.length) return;
    const ids = this.#merged.map(quoteString).join(", ");
    await this.warehouse.client.command({
      query: `ALTER TABLE ${quoteIdent(this.warehouse.database)}.users DELETE WHERE profile_id IN (${ids})`,
    });
    this.#merged = [];
  }

  dispose(): void {
    this.#disposed = true;
    this.transform.dispose();
  }
}
