import type { BackendList, BackendView } from "../../worker/admin/backends";
import { type AdminIdentity, holdsRole } from "../../worker/auth/access";
import { BACKEND_URL_PROBLEMS, BACKENDS_CACHE_MS, type BackendUrlProblem } from "../../worker/inference/backends";
import { formatCount, formatTime } from "../../worker/pages/format";
import { ConsolePage, type SignOut } from "../layout";
import { DataTable } from "../table";

const IN_FORCE = `in force everywhere within ${BACKENDS_CACHE_MS / 1000} seconds`;

function Status(props: { backend: BackendView }) {
  const b = props.backend;
  if (!b.apiKeyReadable) return <span class="badge bad">key unreadable</span>;
  return b.enabled ? <span class="badge active">enabled</span> : <span class="badge suspended">disabled</span>;
}

/** What the gateway last saw of a server's health, shared by every isolate. */
function Health(props: { backend: BackendView }) {
  const h = props.backend.health;
  if (!h) return <span class="muted">no failure seen</span>;
  return h.state === "up" ? (
    <>
      <span class="badge active">up</span> since {formatTime(h.since)}
    </>
  ) : (
    <>
      <span class="badge bad">down</span> since {formatTime(h.since)} ({h.reason ?? "failed"}), checked{" "}
      {formatTime(h.seenAt)}
    </>
  );
}

/** A number field with its label. */
function NumberField(props: {
  id: string;
  name: string;
  label: string;
  value?: number;
  min: number;
  max: number;
  /** "any" for fractions. */
  step: string;
}) {
  return (
    <div class="form-row">
      <label for={props.id}>{props.label}</label>
      <input
        id={props.id}
        name={props.name}
        type="number"
        min={props.min}
        max={props.max}
        step={props.step}
        value={props.value === undefined ? undefined : String(props.value)}
      />
    </div>
  );
}

/** Changing, probing and removing one server added in the console. */
function ServerControls(props: { backend: BackendView; keysSealable: boolean }) {
  const b = props.backend;
  const id = b.id as string;
  const api = `/admin/api/inference-backends/${encodeURIComponent(id)}`;
  return (
    <details class="panel" id={`server-${id}`}>
      <summary>
        Change {b.url} ({b.model})
      </summary>
      <form data-api={api} data-method="PATCH" data-done="reload" data-success={`Saved; ${IN_FORCE}.`}>
        <div class="form-row">
          <label for={`url-${id}`}>URL</label>
          <input
            id={`url-${id}`}
            name="url"
            type="url"
            required
            maxlength={2048}
            value={b.url}
            style="width:100%;max-width:36rem"
          />
        </div>
        <div class="form-row">
          <label for={`served-${id}`}>Served model name (empty: {b.model})</label>
          <input
            id={`served-${id}`}
            name="servedModel"
            maxlength={128}
            value={b.servedModel === b.model ? "" : b.servedModel}
          />
        </div>
        <NumberField
          id={`weight-${id}`}
          name="weight"
          label="Weight"
          value={b.weight}
          min={0.001}
          max={1000}
          step="any"
        />
        <NumberField
          id={`timeout-${id}`}
          name="timeoutMs"
          label="Timeout (ms)"
          value={b.timeoutMs}
          min={100}
          max={600_000}
          step="1"
        />
        {props.keysSealable ? (
          <>
            <div class="form-row">
              <label for={`key-${id}`}>New API key (empty: {b.hasApiKey ? "keep the current one" : "none"})</label>
              <input id={`key-${id}`} name="apiKey" type="password" autocomplete="off" maxlength={4096} />
            </div>
            {b.hasApiKey ? (
              <label class="choice">
                <input type="checkbox" name="clearApiKey" /> Remove the API key
              </label>
            ) : null}
          </>
        ) : null}
        <label class="choice">
          <input type="checkbox" name="enabled" checked={b.enabled} /> Enabled (takes traffic)
        </label>
        <p>
          <button type="submit">Save</button> <output data-form-status />
        </p>
      </form>
      <form data-api={`${api}/probe`} data-success-field="detail">
        <button type="submit">Check health</button> <output data-form-status />
      </form>
      <form
        data-api={api}
        data-method="DELETE"
        data-confirm={`Remove ${b.url} from ${b.model}'s pool?`}
        data-done="reload"
        data-success="Removed."
      >
        <button type="submit" class="danger">
          Remove server
        </button>{" "}
        <output data-form-status />
      </form>
    </details>
  );
}

/** Adding a server to a model's pool. */
function AddServer(props: { models: readonly string[]; keysSealable: boolean }) {
  return (
    <form
      class="panel"
      id="add-server"
      data-api="/admin/api/inference-backends"
      data-done="reload"
      data-success={`Added; ${IN_FORCE}.`}
    >
      <div class="form-row">
        <label for="add-model">Model</label>
        <select id="add-model" name="model" required>
          {props.models.map((m) => (
            <option value={m}>{m}</option>
          ))}
        </select>
      </div>
      <div class="form-row">
        <label for="add-url">URL (OpenAI-compatible server, without /v1)</label>
        <input
          id="add-url"
          name="url"
          type="url"
          required
          maxlength={2048}
          placeholder="https://gpu-1.example.com:8000"
          style="width:100%;max-width:36rem"
        />
      </div>
      <div class="form-row">
        <label for="add-served">Served model name (vLLM's --served-model-name; empty: the model id)</label>
        <input id="add-served" name="servedModel" maxlength={128} />
      </div>
      <NumberField id="add-weight" name="weight" label="Weight (default 1)" min={0.001} max={1000} step="any" />
      <NumberField
        id="add-timeout"
        name="timeoutMs"
        label="Timeout in ms (default 120000)"
        min={100}
        max={600_000}
        step="1"
      />
      {props.keysSealable ? (
        <div class="form-row">
          <label for="add-key">API key (optional; sealed, never shown again)</label>
          <input id="add-key" name="apiKey" type="password" autocomplete="off" maxlength={4096} />
        </div>
      ) : (
        <p class="muted">
          Servers added here cannot have API keys until the <code>INFERENCE_KEYS_SECRET</code> secret is set.
        </p>
      )}
      <label class="choice">
        <input type="checkbox" name="enabled" checked /> Enabled (takes traffic at once)
      </label>
      <p>
        <button type="submit">Add server</button> <output data-form-status />
      </p>
    </form>
  );
}

/** Every model's inference servers; admins add, change, probe and remove those of the console. */
export function BackendsPage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  list: BackendList;
  models: readonly string[];
}) {
  const { list } = props;
  const isAdmin = holdsRole(props.admin, "admin");
  const stored = list.items.filter((b) => b.source === "console");
  return (
    <ConsolePage title="Inference servers" section="servers" admin={props.admin} signOut={props.signOut}>
      <h1>Inference servers</h1>
      <p class="muted">
        A model's requests are balanced by weight over its enabled servers; one that fails is skipped and probed until
        it recovers, and every isolate of the gateway learns of it within seconds (Health). Servers of{" "}
        <code>INFERENCE_BACKENDS</code> are set by the deployment; those added here are {IN_FORCE}. URLs must be http(s)
        and not private, loopback, link-local or metadata addresses unless the host is listed in{" "}
        <code>INFERENCE_ALLOWED_HOSTS</code>.
      </p>
      {list.refused.length > 0 ? (
        <div class="panel bad" id="refused-servers" role="alert">
          <strong>Refused servers of INFERENCE_BACKENDS</strong>
          <ul>
            {list.refused.map((r) => (
              <li>
                {r.model}: {r.url} {BACKEND_URL_PROBLEMS[r.problem as BackendUrlProblem] ?? r.problem}
              </li>
            ))}
          </ul>
        </div>
      ) : null}
      <DataTable
        rows={list.items}
        caption="Servers by model"
        empty={<p class="empty">No inference servers yet: every completion is answered 503.</p>}
        columns={[
          { label: "Model", cell: (b) => b.model },
          { label: "URL", cell: (b) => <code>{b.url}</code> },
          { label: "Served as", cell: (b) => b.servedModel },
          { label: "Weight", numeric: true, cell: (b) => formatCount(b.weight) },
          { label: "Timeout", numeric: true, cell: (b) => `${formatCount(b.timeoutMs / 1000)} s` },
          { label: "API key", cell: (b) => (b.hasApiKey ? "yes" : "no") },
          { label: "Status", cell: (b) => <Status backend={b} /> },
          { label: "Health", cell: (b) => <Health backend={b} /> },
          {
            label: "Source",
            cell: (b) => (b.source === "configuration" ? "INFERENCE_BACKENDS" : `console, ${formatTime(b.updatedAt)}`),
          },
        ]}
      />
      {isAdmin ? (
        <>
          {stored.length > 0 ? (
            <section aria-labelledby="change-heading">
              <h2 id="change-heading">Change a server</h2>
              {stored.map((b) => (
                <ServerControls backend={b} keysSealable={list.keysSealable} />
              ))}
            </section>
          ) : null}
          <section aria-labelledby="add-heading">
            <h2 id="add-heading">Add a server</h2>
            <AddServer models={props.models} keysSealable={list.keysSealable} />
          </section>
        </>
      ) : (
        <p class="panel">Adding and changing servers needs the admin role.</p>
      )}
    </ConsolePage>
  );
}
