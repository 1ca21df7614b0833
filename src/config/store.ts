import { watch, type FSWatcher } from "node:fs";
import { loadConfig, ConfigError, type Config } from "./loader.ts";
import { log } from "../util/log.ts";

export interface ConfigStoreOptions {
  dir: string;
  env?: Record<string, string | undefined>;
  /** Coalesces the bursts of events editors produce when saving. */
  debounceMs?: number;
}

/**
 * Holds the last good configuration and swaps it atomically on change.
 * Requests already running keep the snapshot they started with, so a reload never drops them.
 */
export class ConfigStore {
  #config: Config;
  #watcher?: FSWatcher;
  #timer?: ReturnType<typeof setTimeout>;
  #listeners = new Set<(c: Config) => void>();
  lastError?: string;
  readonly reloads = { ok: 0, failed: 0 };

  constructor(readonly options: ConfigStoreOptions) {
    this.#config = loadConfig(options.dir, options.env ?? process.env);
  }

  get current(): Config {
    return this.#config;
  }

  onChange(fn: (c: Config) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** Re-reads the directory; on failure keeps the last good configuration. */
  reload(): boolean {
    try {
      const next = loadConfig(this.options.dir, this.options.env ?? process.env);
      this.#config = next;
      this.lastError = undefined;
      this.reloads.ok++;
      log.info("configuration reloaded", { connections: [...next.connections.keys()] });
      for (const fn of this.#listeners) fn(next);
      return true;
    } catch (e) {
      this.reloads.failed++;
      this.lastError = e instanceof ConfigError ? e.problems.join("\n") : String(e);
      log.error("configuration change rejected; the last good configuration keeps running", { error: this.lastError });
      return false;
    }
  }

  watch(): void {
    if (this.#watcher) return;
    this.#watcher = watch(this.options.dir, () => {
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => this.reload(), this.options.debounceMs ?? 150);
    });
  }

  close(): void {
    clearTimeout(this.#timer);
    this.#watcher?.close();
    this.#watcher = undefined;
  }
}
