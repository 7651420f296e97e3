import type { Child } from "hono/jsx";
import {
  type JsonSchema,
  type MediaTypeObject,
  type OpenApiDocument,
  type Operation,
  operationsByTag,
  type SchemaToken,
  schemaTokens,
} from "./openapi";

// Self-contained: no fonts, scripts or stylesheets from elsewhere (the page must work offline).
// Colours meet WCAG AA contrast on their backgrounds.
const STYLES = `
:root{--fg:#1b1f24;--muted:#4a5563;--bg:#fff;--panel:#f5f7fa;--line:#cdd4de;--accent:#0b57d0;color-scheme:light}
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
.skip{position:absolute;left:-999px}.skip:focus{left:.5rem;top:.5rem;background:#fff;color:var(--accent);padding:.5rem;z-index:1}
header.site{background:#10243e;color:#fff;padding:.75rem 1rem}header.site a{color:#fff}header.site p{margin:.25rem 0 0;color:#dbe4f0}
h1{font-size:1.5rem;margin:0}.layout{display:grid;grid-template-columns:16rem minmax(0,1fr);gap:2rem;max-width:76rem;margin:0 auto;padding:1rem}
nav ul{list-style:none;padding-left:0;margin:.25rem 0 1rem}nav ul ul{padding-left:.75rem}nav li{margin:.15rem 0}nav h2{font-size:1rem;margin:.5rem 0}
nav{position:sticky;top:0;align-self:start;max-height:100vh;overflow:auto;font-size:.9rem}
a{color:var(--accent)}:focus-visible{outline:3px solid #ff9e1b;outline-offset:2px}
h2{font-size:1.3rem;border-bottom:1px solid var(--line);padding-bottom:.25rem;margin-top:2rem}h3{font-size:1.05rem;margin:0;overflow-wrap:anywhere}h4{font-size:.95rem;margin:1rem 0 .35rem}
article.op{border:1px solid var(--line);border-radius:8px;padding:.75rem 1rem;margin:1rem 0}
.method{display:inline-block;min-width:4.2rem;text-align:center;border-radius:4px;padding:0 .4rem;margin-right:.5rem;font:700 .8rem/1.6 ui-monospace,Menlo,Consolas,monospace;text-transform:uppercase;border:1px solid currentColor}
.get{color:#0f5a2a;background:#e6f4ea}.post{color:#0a4595;background:#e7effc}.put,.patch{color:#7a4100;background:#fff1dc}.delete{color:#9b1116;background:#fde7e8}.other{color:#4a5563;background:#f0f2f5}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}
pre{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:.6rem .75rem;overflow-x:auto;margin:.25rem 0 .5rem;white-space:pre}
.note{color:var(--muted)}.muted{color:var(--muted)}.badge{font-size:.8rem;border:1px solid var(--line);border-radius:999px;padding:0 .5rem;margin-left:.25rem}
.table-wrap{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;vertical-align:top;border-bottom:1px solid var(--line);padding:.35rem .5rem}th{background:var(--panel)}
td pre{margin:0}
footer{color:var(--muted);font-size:.85rem;padding:1rem;text-align:center}
@media (max-width:760px){.layout{grid-template-columns:1fr;padding:.75rem}nav{position:static;max-height:none}}
`;

function SchemaBlock(props: { schema: JsonSchema | undefined }) {
  return (
    <pre>
      <code>
        {schemaTokens(props.schema).map((token: SchemaToken) =>
          typeof token === "string" ? (
            token
          ) : "ref" in token ? (
            <a href={`#schema-${token.ref}`}>{token.ref}</a>
          ) : (
            <span class="note">{token.note}</span>
          ),
        )}
      </code>
    </pre>
  );
}

function Content(props: { content: Record<string, MediaTypeObject> | undefined }) {
  const entries = Object.entries(props.content ?? {});
  if (entries.length === 0) return <p class="muted">No body.</p>;
  return (
    <>
      {entries.map(([mediaType, media]) => (
        <div>
          <code>{mediaType}</code>
          <SchemaBlock schema={media.schema} />
        </div>
      ))}
    </>
  );
}

function operationAnchor({ method, path }: Operation): string {
  return `op-${method}-${path.replace(/[^A-Za-z0-9]+/g, "-").replace(/^-|-$/g, "")}`;
}

function OperationView({ op }: { op: Operation }) {
  const { method, path, operation } = op;
  const id = operationAnchor(op);
  const methodClass = ["get", "post", "put", "patch", "delete"].includes(method) ? method : "other";
  const parameters = operation.parameters ?? [];
  const security = (operation.security ?? []).flatMap((requirement) => Object.keys(requirement));
  return (
    <article class="op" id={id} aria-labelledby={`${id}-h`}>
      <h3 id={`${id}-h`}>
        <span class={`method ${methodClass}`}>{method}</span>
        <code>{path}</code>
        {operation.deprecated ? <span class="badge">deprecated</span> : null}
      </h3>
      {operation.summary ? <p>{operation.summary}</p> : null}
      {operation.description ? <p class="muted">{operation.description}</p> : null}
      {security.length > 0 ? (
        <p>
          Requires: <code>{security.join(", ")}</code>
        </p>
      ) : null}

      {parameters.length > 0 ? (
        <>
          <h4>Parameters</h4>
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">In</th>
                  <th scope="col">Schema</th>
                  <th scope="col">Description</th>
                </tr>
              </thead>
              <tbody>
                {parameters.map((p) => (
                  <tr>
                    <td>
                      <code>{p.name}</code>
                      {p.required ? "" : <span class="muted"> (optional)</span>}
                    </td>
                    <td>{p.in}</td>
                    <td>
                      <SchemaBlock schema={p.schema} />
                    </td>
                    <td>{p.description ?? ""}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      ) : null}

      {operation.requestBody ? (
        <>
          <h4>Request body{operation.requestBody.required ? "" : " (optional)"}</h4>
          {operation.requestBody.description ? <p>{operation.requestBody.description}</p> : null}
          <Content content={operation.requestBody.content} />
        </>
      ) : null}

      <h4>Responses</h4>
      {Object.entries(operation.responses ?? {}).map(([status, response]) => (
        <section aria-label={`Response ${status}`}>
          <p>
            <strong>{status}</strong> {response.description ?? ""}
          </p>
          {response.content ? <Content content={response.content} /> : null}
        </section>
      ))}
    </article>
  );
}

/** The whole API reference page for an OpenAPI 3.1 document. */
export function ApiReference({ doc, documentUrl }: { doc: OpenApiDocument; documentUrl: string }) {
  const groups = operationsByTag(doc);
  const schemas = Object.entries(doc.components?.schemas ?? {});
  const tagAnchor = (tag: string) => `tag-${tag.replace(/[^A-Za-z0-9]+/g, "-")}`;
  const page: Child = (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>{doc.info.title} API reference</title>
        <style dangerouslySetInnerHTML={{ __html: STYLES }} />
      </head>
      <body>
        <a class="skip" href="#main">
          Skip to the reference
        </a>
        <header class="site">
          <h1>
            {doc.info.title} API reference <span class="badge">v{doc.info.version}</span>
          </h1>
          {doc.info.description ? <p>{doc.info.description}</p> : null}
          <p>
            Machine-readable: <a href={documentUrl}>OpenAPI {doc.openapi} document</a>
          </p>
        </header>
        <div class="layout">
          <nav aria-label="Contents">
            <h2>Contents</h2>
            <ul>
              {groups.map((group) => (
                <li>
                  <a href={`#${tagAnchor(group.tag)}`}>{group.tag}</a>
                  <ul>
                    {group.operations.map((op) => (
                      <li>
                        <a href={`#${operationAnchor(op)}`}>
                          <code>
                            {op.method.toUpperCase()} {op.path}
                          </code>
                        </a>
                      </li>
                    ))}
                  </ul>
                </li>
              ))}
              {schemas.length > 0 ? (
                <li>
                  <a href="#schemas">Schemas</a>
                </li>
              ) : null}
            </ul>
          </nav>
          <main id="main">
            {groups.map((group) => (
              <section aria-labelledby={tagAnchor(group.tag)}>
                <h2 id={tagAnchor(group.tag)}>{group.tag}</h2>
                {group.description ? <p>{group.description}</p> : null}
                {group.operations.map((op) => (
                  <OperationView op={op} />
                ))}
              </section>
            ))}
            {schemas.length > 0 ? (
              <section aria-labelledby="schemas">
                <h2 id="schemas">Schemas</h2>
                {schemas.map(([name, schema]) => (
                  <div id={`schema-${name}`}>
                    <h3>{name}</h3>
                    {schema.description ? <p>{schema.description}</p> : null}
                    <SchemaBlock schema={{ ...schema, description: undefined }} />
                  </div>
                ))}
              </section>
            ) : null}
          </main>
        </div>
        <footer>Rendered on the server from {documentUrl}.</footer>
      </body>
    </html>
  );
  return page;
}

/** The page as an HTML string. Every text from the document goes through JSX, which escapes it. */
export async function renderApiReference(doc: OpenApiDocument, documentUrl = "/openapi.json"): Promise<string> {
  return `<!doctype html>${await (<ApiReference doc={doc} documentUrl={documentUrl} />).toString()}`;
}
