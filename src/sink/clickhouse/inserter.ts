import type { Warehouse } from "./server.ts";
import { quoteIdent } from "./server.ts";
import { log } from "../../util/log.ts";
import { clickHouseCode } from "./errors.ts";
import { inserterDefaults as envInserterDefaults } from "../../config/env.ts";

type Row = Record<string, unknown>;

export interface InserterOptions {
  /** First retry delay; doubles up to maxBackoffMs. */
  initialBackoffMs: number;
  maxBackoffMs: number;
}

/** From config/env.ts, the one place defaults live. */
export const inserterDefaults: InserterOptions = envInserterDefaults;

/** ClickHouse error codes that mean "this data", not "this server": retrying cannot help. */
// 6 CANNOT_PARSE_TEXT, 26/27 CANNOT_PARSE_*, 38/41 date/time parse, 53 TYPE_MISMATCH, 69/70 overflow/conversion,
// 72 CANNOT_PARSE_NUMBER, 117 INCORRECT_DATA, 131 TOO_LARGE_STRING_SIZE.
const CONTENT_ERRORS = new Set([6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131]);

export interface InsertOutcome {
  inserted: number;
  /** Rows ClickHouse refused for their content, with its reason. */
  rejected: { row: Row; reason: string }[];
}

/**
 * Inserts rows, retrying server and network failures with capped exponential backoff for as
 * long as it takes (the events wait in JetStream meanwhile), and isolating rows ClickHouse
 * rejects for their content by bisection so the rest of the batch still lands.
 */
export class Inserter {
  #stopped = false;
  constructor(
    readonly warehouse: Warehouse,
    readonly table: string,
    readonly options: InserterOptions = inserterDefaults,
    /** Called before each retry (e.g. to keep JetStream from redelivering the batch meanwhile). */
    readonly onRetry: (attempt: number, error: unknown) => void = () => {},
  ) {}

  stop(): void {
    this.#stopped = true;
  }

  async insert(rows: Row[]): Promise<InsertOutcome> {
    const outcome: InsertOutcome = { inserted: 0, rejected: [] };
    if (rows.length) await this.#insertIsolating(rows, outcome);
    return outcome;
  }

  async #insertIsolating(rows: Row[], outcome: InsertOutcome): Promise<void> {
    const error = await this.#insertRetrying(rows);
    if (error === undefined) {
      outcome.inserted += rows.length;
      return;
    }
    if (rows.length === 1) {
      outcome.rejected.push({ row: rows[0]!, reason: String((error as Error).message ?? error).split("\n")[0]! });
      return;
    }
    const mid = rows.length >> 1;
    await this.#insertIsolating(rows.slice(0, mid), outcome);
    await this.#insertIsolating(rows.slice(mid), outcome);
  }

  /** undefined on success; the error when ClickHouse refused the content. */
  async #insertRetrying(rows: Row[]): Promise<unknown> {
    let delay = this.options.initialBackoffMs;
    for (let attempt = 1; ; attempt++) {
      try {
        const table = `${quoteIdent(this.warehouse.database)}.${quoteIdent(this.table)}`;
        if (this.warehouse.insertRows) await this.warehouse.insertRows(table, rows);
        else await this.warehouse.client.insert({ table, values: rows, format: "JSONEachRow" });
        return undefined;
      } catch (e) {
        const code = clickHouseCode(e);
        if (code !== undefined && CONTENT_ERRORS.has(code)) return e;
        if (this.#stopped) throw e;
        if (attempt === 1 || attempt % 10 === 0)
          log.warn("clickhouse insert failed; retrying", {
            table: this.table,
            attempt,
            error: String((e as Error).message ?? e).split("\n")[0],
          });
        this.onRetry(attempt, e);
        await Bun.sleep(delay);
        delay = Math.min(delay * 2, this.options.maxBackoffMs);
      }
    }
  }
}
