import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { LineCounter, parseDocument, visit, type Document, type Node } from "yaml";
import { Connection, CustomerModelFile } from "./schema.ts";
import { schemaProblems } from "./schema-errors.ts";
import { didYouMean } from "./suggest.ts";
import { compileExpression, compileFilter } from "../expr/index.ts";
import { webhookCheckProblem } from "./webhook-check.ts";
import { destinationProblems } from "./destination.ts";

/** A configuration that cannot be used; each message names file, line and field. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join("\n  ")}`);
    this.name = "ConfigError";
  }
}

export interface LoadedConnection extends Connection {
  file: string;
}

export interface Config {
  connections: Map<string, LoadedConnection>;
  customerModel: CustomerModelFile["customerModel"];
  /** `migrate: true` in a customer model file. */
  customerModelMigrate: boolean;
  /** `identifiers` (highest priority first) and `identifiersMergeUserIds` of the customer model file (the loader always sets it). */
  identity?: { identifiers: string[]; mergeUserIds: boolean };
  files: string[];
}

const checkConnection = TypeCompiler.Compile(Connection);
const checkCustomerModel = TypeCompiler.Compile(CustomerModelFile);

/** `${NAME}`, or `${NAME:-default}` as in shells and Compose files. */
const VAR = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

function lineOf(lc: LineCounter, node: Node | null | undefined): number {
  const offset = node?.range?.[0] ?? 0;
  return lc.linePos(offset).line;
}

/** Walks a JSON-pointer path into the YAML document to find the nearest node that exists. */
function nodeAt(doc: Document, path: string): Node | undefined {
  const segments = path
    .split("/")
    .slice(1)
    .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"))
    .map((s) => (/^\d+$/.test(s) ? Number(s) : s));
  for (let n = segments.length; n >= 0; n--) {
    const node = n === 0 ? doc.contents : doc.getIn(segments.slice(0, n), true);
    if (node && typeof node === "object") return node as Node;
  }
  return undefined;
}

/** The line of a JSON-pointer path in a YAML text (for problems found after loading, such as user code). */
export function lineInYaml(text: string, path: string): number {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc });
  return lineOf(lc, nodeAt(doc, path));
}

/** Substitutes `${VAR}`; returns each value taken from the environment with its name (write keys, secrets). */
function substitute(
  doc: Document,
  lc: LineCounter,
  env: Record<string, string | undefined>,
  where: string,
  problems: string[],
): Map<string, string> {
  const used = new Map<string, string>();
  visit(doc, {
    Scalar(_key, node) {
      if (typeof node.value !== "string" || !node.value.includes("${")) return;
      node.value = node.value.replace(VAR, (_m, name: string, fallback: string | undefined) => {
        const value = env[name] || fallback;
        if (value === undefined) {
          problems.push(`${where}:${lineOf(lc, node)}: environment variable \${${name}} is not set`);
          return "";
        }
        if (env[name]) used.set(env[name]!, name);
        return value;
      });
    },
  });
  return used;
}

type Parsed =
  | { kind: "connection"; value: LoadedConnection }
  | { kind: "customerModel"; value: CustomerModelFile }
  | { kind: "problems"; problems: string[] };

/** One file of `pipelines/`: its connection or customer model, or its problems, each on one line starting `file:line:`. */
export function parseConfigFile(file: string, text: string, env: Record<string, string | undefined>): Parsed {
  const substituted = new Map<string, string>();
  const r = parseFile(file, text, env, substituted);
  if (r.kind !== "problems") return r;
  // Problems are logged: a value from the environment (a write key, a secret) that a message would
  // quote (a key or expression it ended up in) is shown as its ${NAME}. And a YAML key can hold a
  // line break ("? [a,\n b]"): a problem stays on one line, so each line starts with "file:line:".
  const secrets = [...substituted].filter(([value]) => value.length >= 4).sort((a, b) => b[0].length - a[0].length);
  const redact = (p: string) => secrets.reduce((q, [value, name]) => q.replaceAll(value, `\${${name}}`), p);
  return { kind: "problems", problems: r.problems.map((p) => redact(p).replace(/\s*[\r\n]+\s*/g, " ")) };
}

function parseFile(
  file: string,
  text: string,
  env: Record<string, string | undefined>,
  substituted: Map<string, string>,
): Parsed {
  const lc = new LineCounter();
  // logLevel "error": the library would otherwise print its own warnings (a collection used as a
  // key, an unknown tag) to stderr, outside the node's JSON log lines; the schema reports those keys.
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, logLevel: "error" });
  const problems: string[] = [];
  for (const e of doc.errors) problems.push(`${file}:${lc.linePos(e.pos[0]).line}: YAML: ${e.message.split("\n")[0]}`);
  if (problems.length) return { kind: "problems", problems };
  for (const [value, name] of substitute(doc, lc, env, file, problems)) substituted.set(value, name);
  if (problems.length) return { kind: "problems", problems };
  let value: unknown;
  try {
    value = doc.toJS();
  } catch (e) {
    // The yaml library refuses alias expansion past a limit ("billion laughs") with a ReferenceError.
    return { kind: "problems", problems: [`${file}:1: YAML: ${String((e as Error)?.message ?? e).split("\n")[0]}`] };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value))
    return { kind: "problems", problems: [`${file}:1: expected a mapping with "connection:" or "customerModel:"`] };
  const isModel = "customerModel" in value;
  const checker = isModel ? checkCustomerModel : checkConnection;
  if (checker.Check(value)) {
    if (isModel) return { kind: "customerModel", value: value as CustomerModelFile };
    const connection = value as Connection;
    connection.pipelines?.forEach((p, i) => {
      const at = (path: string) =>
        `${file}:${lineOf(lc, nodeAt(doc, `/pipelines/${i}${path}`))}: pipelines/${i}${path} of "${p.name}"`;
      try {
        compileFilter(p.filter);
      } catch (e) {
        problems.push(`${at("/filter")}: ${(e as Error).message}`);
      }
      if ((p.import === undefined) === (p.export === undefined))
        problems.push(`${at("")}: exactly one of import (events | users) and export (events)`);
      if (p.export !== undefined && !p.destination)
        problems.push(`${at("")}: export: events needs a destination (type and url)`);
      if (p.export === undefined && p.destination)
        problems.push(`${at("/destination")}: destination is for export pipelines`);
      if (p.destination)
        for (const d of destinationProblems(p.destination))
          problems.push(`${at(`/destination${d.path}`)}: ${d.message}`);
      if (p.import === "users" && !p.transform)
        problems.push(`${at("")}: import: users needs a transform (mapping, jsonata, javascript or python)`);
      if (p.import === "events" && p.transform)
        problems.push(`${at("/transform")}: import: events loads events as they are; transform is for import: users`);
      const t = p.transform;
      const expressions: [string, string][] =
        t && "mapping" in t
          ? Object.entries(t.mapping).map(([k, v]) => [`/transform/mapping/${k}`, v])
          : t && "jsonata" in t
            ? [["/transform/jsonata", t.jsonata]]
            : [];
      for (const [path, expr] of expressions) {
        try {
          compileExpression(expr);
        } catch (e) {
          problems.push(`${at(path)}: ${(e as Error).message}`);
        }
      }
    });
    const expressions: [string, string | undefined][] = [
      ["/events", connection.events],
      ["/dedup/jsonata", connection.dedup && "jsonata" in connection.dedup ? connection.dedup.jsonata : undefined],
    ];
    for (const [path, expr] of expressions) {
      if (expr === undefined) continue;
      try {
        compileExpression(expr);
      } catch (e) {
        problems.push(`${file}:${lineOf(lc, nodeAt(doc, path))}: ${path.slice(1)}: ${(e as Error).message}`);
      }
    }
    if (problems.length) return { kind: "problems", problems };
    return { kind: "connection", value: { ...connection, file } };
  }
  for (const e of schemaProblems(isModel ? CustomerModelFile : Connection, value)) {
    const field = e.path === "" ? "(file)" : e.path.slice(1);
    problems.push(`${file}:${lineOf(lc, nodeAt(doc, e.path))}: ${field}: ${e.message}`);
  }
  return { kind: "problems", problems };
}

/**
 * A `mapping` writes Customer Model properties, so each of its keys must be one: a pipeline
 * mapping onto a property the model lacks would fail every event it keeps (the model check runs
 * per event), loading nothing. Refused here, so `check`, start-up and reload all say so.
 */
function checkMappings(
  connections: LoadedConnection[],
  model: CustomerModelFile["customerModel"],
  texts: Map<string, string>,
  problems: string[],
) {
  const properties = Object.keys(model);
  for (const c of connections) {
    c.pipelines?.forEach((p, i) => {
      // An export's mapping names the fields of the body it sends, not Customer Model properties.
      if (p.export !== undefined || !p.transform || !("mapping" in p.transform)) return;
      for (const key of Object.keys(p.transform.mapping)) {
        if (Object.hasOwn(model, key)) continue;
        const path = `/pipelines/${i}/transform/mapping/${key.replace(/~/g, "~0").replace(/\//g, "~1")}`;
        const why = properties.length
          ? `property "${key}" is not in the Customer Model${didYouMean(key, properties) || ` (it has ${properties.slice(0, 20).join(", ")}${properties.length > 20 ? ", …" : ""})`}`
          : `property "${key}" is not in the Customer Model, which has no properties: declare it in a file of pipelines/ (customerModel: {${key}: string})`;
        const problem = `${c.file}:${lineInYaml(texts.get(c.file) ?? "", path)}: pipelines/${i}/transform/mapping/${key} of "${p.name}": ${why}`;
        problems.push(problem.replace(/\s*[\r\n]+\s*/g, " ")); // one line per problem, as parseConfigFile's
      }
    });
  }
}

/**
 * Identifiers are compared as Customer Model values, so each must be a property, and one whose
 * value is a single comparable value (not a list, not free JSON): otherwise it could never match.
 */
function checkIdentifiers(
  identifiers: { file: string; names: string[] } | undefined,
  model: CustomerModelFile["customerModel"],
  texts: Map<string, string>,
  problems: string[],
) {
  if (!identifiers) return;
  const properties = Object.keys(model);
  identifiers.names.forEach((name, i) => {
    const type = model[name];
    const why =
      type === undefined
        ? `"${name}" is not a Customer Model property${didYouMean(name, properties) || ` (it has ${properties.slice(0, 20).join(", ") || "none"})`}`
        : type === "json" || type.startsWith("array(")
          ? `"${name}" is ${type}: an identifier must be a single value (string, int, float, boolean or datetime)`
          : undefined;
    if (why)
      problems.push(
        `${identifiers.file}:${lineInYaml(texts.get(identifiers.file) ?? "", `/identifiers/${i}`)}: identifiers/${i}: ${why}`,
      );
  });
}

/** Cross-file rules a per-file schema cannot express. */
function checkWhole(connections: LoadedConnection[], problems: string[]) {
  const names = new Map<string, string>();
  const keys = new Map<string, string>();
  for (const c of connections) {
    const other = names.get(c.connection);
    if (other) problems.push(`${c.file}:1: connection: "${c.connection}" is already defined in ${other}`);
    names.set(c.connection, c.file);
    if (c.source === "raw") {
      const problem = webhookCheckProblem(c);
      if (problem) problems.push(`${c.file}:1: ${problem}`);
      const table = c.table ?? c.connection;
      if (["events", "users"].includes(table))
        problems.push(`${c.file}:1: table: "${table}" is Tributary's own table; name the raw table otherwise`);
    } else if (!c.writeKeys?.length) {
      problems.push(`${c.file}:1: writeKeys: a ${c.source} connection needs at least one write key`);
    }
    for (const k of c.writeKeys ?? []) {
      const owner = keys.get(k);
      if (owner && owner !== c.connection)
        problems.push(`${c.file}:1: writeKeys: a key of "${c.connection}" also belongs to "${owner}"`);
      keys.set(k, c.connection);
    }
  }
}

export function loadConfig(dir: string, env: Record<string, string | undefined> = process.env): Config {
  let entries: string[];
  try {
    entries = readdirSync(dir)
      .filter((f) => /\.ya?ml$/.test(f))
      .sort();
  } catch (e) {
    throw new ConfigError([`${dir}: cannot read pipelines directory: ${(e as Error).message}`]);
  }
  const problems: string[] = [];
  const connections: LoadedConnection[] = [];
  let customerModel: CustomerModelFile["customerModel"] = {};
  let customerModelMigrate = false;
  let identifiers: { file: string; names: string[] } | undefined;
  let mergeUserIds = false;
  const files: string[] = [];
  const texts = new Map<string, string>();
  for (const name of entries) {
    const path = join(dir, name);
    const shown = relative(process.cwd(), path) || path;
    let text: string;
    try {
      // An editor may replace or remove the file between the listing and here.
      if (!statSync(path).isFile()) continue;
      text = readFileSync(path, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT")
        problems.push(`${shown}:1: cannot read the file: ${(e as Error).message}`);
      continue;
    }
    files.push(shown);
    texts.set(shown, text);
    const parsed = parseConfigFile(shown, text, env);
    if (parsed.kind === "problems") problems.push(...parsed.problems);
    else if (parsed.kind === "connection") connections.push(parsed.value);
    else {
      customerModel = { ...customerModel, ...parsed.value.customerModel };
      customerModelMigrate ||= parsed.value.migrate === true;
      mergeUserIds ||= parsed.value.identifiersMergeUserIds === true;
      if (parsed.value.identifiers) {
        if (identifiers)
          problems.push(`${shown}:1: identifiers: already listed in ${identifiers.file}; list them in one file`);
        else identifiers = { file: shown, names: parsed.value.identifiers };
      }
    }
  }
  // Mappings are checked only once every file loaded: a file that failed may be (or have been meant
  // as) the Customer Model, and its own problem is what to fix, not every mapping onto it.
  const everyFileLoaded = problems.length === 0;
  checkWhole(connections, problems);
  if (everyFileLoaded) checkMappings(connections, customerModel, texts, problems);
  if (everyFileLoaded) checkIdentifiers(identifiers, customerModel, texts, problems);
  if (problems.length) throw new ConfigError(problems);
  return {
    connections: new Map(connections.map((c) => [c.connection, c])),
    customerModel,
    customerModelMigrate,
    identity: { identifiers: identifiers?.names ?? [], mergeUserIds },
    files,
  };
}
