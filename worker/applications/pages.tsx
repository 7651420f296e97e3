import type { FieldError } from "../errors";
import { LicenseChange } from "../licenses/pages";
import type { LicenseChangeView } from "../licenses/routes";
import { Page } from "../pages/layout";
import { findFamily } from "../policy/families";
import { regionName } from "../policy/regions";
import type { LicenseFamily } from "../policy/types";
import type { ConfirmationTerms } from "./confirm";
import { COUNTRY_CODES, countryName } from "./countries";
import type { ApplicantView } from "./status";

/** What the form was filled with, for showing it again after a validation error. */
export type FormValues = Record<string, unknown>;

function valueAt(values: FormValues, path: string): string {
  let node: unknown = values;
  for (const key of path.split(".")) node = (node as Record<string, unknown> | undefined)?.[key];
  return typeof node === "string" || typeof node === "number" ? String(node) : "";
}

function FieldErrorText(props: { errors: FieldError[]; field: string; id: string }) {
  const messages = props.errors.filter((e) => e.field === props.field || e.field.startsWith(`${props.field}.`));
  if (messages.length === 0) return null;
  return (
    <p class="field-error" id={props.id}>
      {messages.map((m) => m.message).join(" ")}
    </p>
  );
}

/** Input with label, hint and error wired for assistive technology. */
function Field(props: {
  name: string;
  label: string;
  type?: string;
  hint?: string;
  values: FormValues;
  errors: FieldError[];
  required?: boolean;
  autocomplete?: string;
  inputmode?: "numeric" | "email" | "url";
}) {
  const id = `f-${props.name.replace(/\./g, "-")}`;
  const describedBy = [props.hint ? `${id}-hint` : "", `${id}-error`].filter(Boolean).join(" ");
  const invalid = props.errors.some((e) => e.field === props.name);
  return (
    <>
      <label for={id}>{props.label}</label>
      {props.hint ? (
        <p class="hint" id={`${id}-hint`}>
          {props.hint}
        </p>
      ) : null}
      <input
        id={id}
        name={props.name}
        type={props.type ?? "text"}
        value={valueAt(props.values, props.name)}
        required={props.required}
        autocomplete={props.autocomplete}
        inputmode={props.inputmode}
        aria-describedby={describedBy}
        aria-invalid={invalid ? "true" : undefined}
      />
      <FieldErrorText errors={props.errors} field={props.name} id={`${id}-error`} />
    </>
  );
}

/**
 * The license and the Acceptable Use Policy as an applicant reads them before accepting, each in a
 * scrollable section, with a word when the operator loaded placeholders; the license's sha256 under
 * it when given (the confirmation page lists both hashes above the texts instead).
 */
function LicenseTexts(props: {
  placeholder: boolean;
  licenseName: string;
  licenseText: string;
  aupText: string;
  licenseSha256?: string;
}) {
  return (
    <>
      {props.placeholder ? (
        <p class="hint">
          This deployment shows placeholder text; the operator has not loaded the official license yet.
        </p>
      ) : null}
      <h2 id="license-heading">{props.licenseName}</h2>
      <section class="doc" tabindex={0} aria-labelledby="license-heading">
        {props.licenseText}
      </section>
      {props.licenseSha256 ? (
        <p class="hint">
          sha256 <code>{props.licenseSha256}</code>
        </p>
      ) : null}
      <h2 id="aup-heading">Acceptable Use Policy</h2>
      <section class="doc" tabindex={0} aria-labelledby="aup-heading">
        {props.aupText}
      </section>
    </>
  );
}

/** The application form for a license family. */
export function ApplicationForm(props: {
  family: LicenseFamily;
  licenseSha256: string;
  aupSha256: string;
  licenseText: string;
  aupText: string;
  placeholder: boolean;
  values?: FormValues;
  errors?: FieldError[];
  problem?: string;
}) {
  const { family } = props;
  const values = props.values ?? {};
  const errors = props.errors ?? [];
  const chosenModels = new Set(
    Array.isArray(values.models)
      ? (values.models as string[])
      : typeof values.models === "string"
        ? [values.models]
        : [],
  );
  const countries = [...COUNTRY_CODES]
    .map((code) => ({ code, name: countryName(code) }))
    .sort((a, b) => a.name.localeCompare(b.name));
  const selectedCountry = valueAt(values, "organization.country").toUpperCase();
  const threshold = family.mau.threshold.toLocaleString("en-US");
  const month = new Date(`${family.mau.measuredMonth}-01T00:00:00Z`).toLocaleString("en-US", {
    month: "long",
    year: "numeric",
    timeZone: "UTC",
  });
  return (
    <Page title={`Apply for ${family.displayName}`}>
      <h1>Apply for access to {family.displayName}</h1>
      <p>
        {family.displayName} is available under the {family.licenseName}. Tell us who you are and how you will use it.
        Most applications are approved at once; some go to a reviewer.
      </p>
      {props.problem || errors.length > 0 ? (
        <div class="errors" role="alert" tabindex={-1} id="form-errors">
          <h2>Please correct the following</h2>
          {props.problem ? <p>{props.problem}</p> : null}
          {errors.length > 0 ? (
            <ul>
              {errors.map((e) => (
                <li>
                  <a href={`#f-${e.field.replace(/\./g, "-")}`}>{e.field}</a>: {e.message}
                </li>
              ))}
            </ul>
          ) : null}
        </div>
      ) : null}
      <form method="post" action="/v1/applications" novalidate>
        <input type="hidden" name="family" value={family.id} />
        <input type="hidden" name="licenseSha256" value={props.licenseSha256} />
        <input type="hidden" name="aupSha256" value={props.aupSha256} />
        <fieldset>
          <legend>Organization</legend>
          <Field
            name="organization.name"
            label="Legal name"
            required
            autocomplete="organization"
            values={values}
            errors={errors}
          />
          <Field
            name="organization.website"
            label="Website (optional)"
            type="url"
            autocomplete="url"
            values={values}
            errors={errors}
          />
          <label for="f-organization-country">Country of incorporation</label>
          <select
            id="f-organization-country"
            name="organization.country"
            required
            aria-describedby="f-organization-country-error"
          >
            <option value="">Choose a country</option>
            {countries.map((c) => (
              <option value={c.code} selected={c.code === selectedCountry}>
                {c.name}
              </option>
            ))}
          </select>
          <FieldErrorText errors={errors} field="organization.country" id="f-organization-country-error" />
        </fieldset>
        <fieldset>
          <legend>Contact</legend>
          <Field name="contact.name" label="Your name" required autocomplete="name" values={values} errors={errors} />
          <Field
            name="contact.email"
            label="Work e-mail"
            type="email"
            required
            autocomplete="email"
            hint="We send the status link and every decision here."
            values={values}
            errors={errors}
          />
        </fieldset>
        <fieldset>
          <legend>Use</legend>
          <label for="f-intendedUse">Intended use</label>
          <p class="hint" id="f-intendedUse-hint">
            What you will build with the model, and for whom.
          </p>
          <textarea
            id="f-intendedUse"
            name="intendedUse"
            required
            aria-describedby="f-intendedUse-hint f-intendedUse-error"
          >
            {valueAt(values, "intendedUse")}
          </textarea>
          <FieldErrorText errors={errors} field="intendedUse" id="f-intendedUse-error" />
          <Field
            name="declaredMau"
            label={`Monthly active users in ${month}`}
            inputmode="numeric"
            required
            hint={`Count the monthly active users of all products and services made available by or for your organization and its affiliates in ${month}, the calendar month before ${family.displayName} was released. Not today's figure. Above ${threshold} the licensor (${family.licensor}) decides; exactly ${threshold} is not above it.`}
            values={values}
            errors={errors}
          />
          <fieldset>
            <legend>Models you want</legend>
            {family.models.map((m) => (
              <label class="check">
                <input
                  type="checkbox"
                  name="models"
                  value={m.id}
                  checked={chosenModels.size === 0 || chosenModels.has(m.id)}
                />
                <span>
                  {m.displayName}
                  {m.excludedRegions && m.excludedRegions.length > 0
                    ? ` (not licensed to organizations whose principal place of business is in ${m.excludedRegions.map(regionName).join(" or ")})`
                    : null}
                </span>
              </label>
            ))}
            <FieldErrorText errors={errors} field="models" id="f-models-error" />
          </fieldset>
        </fieldset>
        <fieldset>
          <legend>License</legend>
          <LicenseTexts
            placeholder={props.placeholder}
            licenseName={family.licenseName}
            licenseText={props.licenseText}
            aupText={props.aupText}
            licenseSha256={props.licenseSha256}
          />
          <LicenseDuties family={family} />
          <label class="check">
            <input
              type="checkbox"
              name="acceptLicense"
              value="true"
              required
              aria-describedby="f-acceptLicense-error"
            />
            <span>I accept the {family.licenseName} on behalf of my organization.</span>
          </label>
          <FieldErrorText errors={errors} field="acceptLicense" id="f-acceptLicense-error" />
          <label class="check">
            <input type="checkbox" name="acceptAup" value="true" required aria-describedby="f-acceptAup-error" />
            <span>I accept the Acceptable Use Policy.</span>
          </label>
          <FieldErrorText errors={errors} field="acceptAup" id="f-acceptAup-error" />
        </fieldset>
        <button type="submit">Submit application</button>
      </form>
    </Page>
  );
}

/** What the license asks of licensees beyond accepting it: shown on the form and the status page. */
function LicenseDuties(props: { family: LicenseFamily | undefined }) {
  const duties = props.family?.duties ?? [];
  if (duties.length === 0) return null;
  return (
    <section aria-labelledby="duties-heading" id="duties">
      <h2 id="duties-heading">What the license asks of you</h2>
      <ul>
        {duties.map((d) => (
          <li>
            {d.text} <span class="hint">(section {d.section})</span>
          </li>
        ))}
      </ul>
    </section>
  );
}

const STATUS_LABELS: Record<ApplicantView["status"], string> = {
  approved: "Approved",
  pending_review: "Pending review",
  info_requested: "Information requested",
  rejected: "Not approved",
};

/** A personal access token as the status page lists it (never its secret). */

function day(iso: string): string {
  return `${iso.replace("T", " ").slice(0, 16)} UTC`;
}

/** Where the case is on its way: submitted, reviewed, decided. */
function Progress(props: { view: ApplicantView }) {
  const { view } = props;
  const decided = view.status === "approved" || view.status === "rejected";
  const steps = [
    { label: "Submitted", detail: day(view.submittedAt), done: true, current: false },
    {
      label: view.status === "info_requested" ? "Waiting for your answer" : "Review",
      detail: decided ? "Done" : view.status === "info_requested" ? "Answer below" : "In progress",
      done: decided,
      current: !decided,
    },
    {
      label: view.status === "rejected" ? "Not approved" : "Approved",
      detail: decided ? day(view.updatedAt) : "Not yet",
      done: decided,
      current: decided,
    },
  ];
  return (
    <ol class="progress" aria-label="Progress of your application">
      {steps.map((step) => (
        <li class={step.done ? "done" : step.current ? "current" : ""} aria-current={step.current ? "step" : undefined}>
          <strong>{step.label}</strong>
          <span>{step.detail}</span>
        </li>
      ))}
    </ol>
  );
}

/** How to get the weights with a token: manifest, download.sh, the Hub clients, the API base. */
function DownloadInstructions(props: { baseUrl: string; family: LicenseFamily | undefined }) {
  const base = props.baseUrl;
  const models = props.family?.models ?? [];
  const model = models[0]?.id ?? "llama-2-7b";
  const hubRepo = models.find((m) => m.id === model)?.hubRepo ?? "meta-llama/Llama-2-7b-hf";
  return (
    <section aria-labelledby="download-heading">
      <h2 id="download-heading">Download the weights</h2>
      <p>
        Replace <code>mg_YOUR_TOKEN</code> with a token that has the download scope. Links in a manifest are signed,
        short-lived and resumable.
      </p>
      <h3>Manifest (every file with size, sha256 and a signed link)</h3>
      <pre class="doc">
        <code>{`curl -H "Authorization: Bearer mg_YOUR_TOKEN" \\\n  ${base}/v1/models/${model}/manifest`}</code>
      </pre>
      <h3>download.sh (resumes and verifies)</h3>
      <pre class="doc">
        <code>{`curl -fsS -H "Authorization: Bearer mg_YOUR_TOKEN" \\\n  -o download.sh ${base}/v1/models/${model}/download.sh\nsh download.sh ${model}`}</code>
      </pre>
      <h3>Hugging Face CLI</h3>
      <p>
        <code>hf</code> comes with <code>huggingface_hub</code> 0.x and 1.x; with 0.x,{" "}
        <code>huggingface-cli download</code> works too. Hub clients take the token prefixed with <code>hf_</code>.
      </p>
      <pre class="doc">
        <code>{`HF_ENDPOINT=${base} HF_TOKEN=hf_mg_YOUR_TOKEN \\\n  hf download ${hubRepo} --local-dir ./${hubRepo.split("/")[1] ?? "weights"}`}</code>
      </pre>
      <h3>JavaScript (@huggingface/hub)</h3>
      <pre class="doc">
        <code>{`import { downloadFile } from "@huggingface/hub";\nconst file = await downloadFile({\n  repo: "${hubRepo}",\n  path: "config.json",\n  hubUrl: "${base}",\n  accessToken: "hf_mg_YOUR_TOKEN",\n});`}</code>
      </pre>
      {models.length > 0 ? (
        <>
          <h3>Models</h3>
          <table>
            <caption>Model ids and their Hub repositories</caption>
            <thead>
              <tr>
                <th scope="col">Model</th>
                <th scope="col">Id</th>
                <th scope="col">Hub repository</th>
              </tr>
            </thead>
            <tbody>
              {models.map((m) => (
                <tr>
                  <td>{m.displayName}</td>
                  <td>
                    <code>{m.id}</code>
                  </td>
                  <td>
                    <code>{m.hubRepo}</code>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      ) : null}
      <h2 id="api-heading">Call the model</h2>
      <p>
        The OpenAI-compatible API lives at <code>{base}/v1</code>: point an OpenAI client's base URL there and use a
        token with the inference scope as its API key.
      </p>
    </section>
  );
}

/** The applicant's status page, opened with the capability link. */
export function StatusPage(props: {
  view: ApplicantView;
  token: string;
  notice?: string;
  /** The gateway's public origin, for the instructions. */
  baseUrl?: string;
  /** New license versions the grant must accept: shown with what changed; members accept at /account/license. */
  licenseChanges?: LicenseChangeView[];
}) {
  const { view } = props;
  const family = findFamily(view.family);
  const active = view.status === "approved" && view.grant?.status === "active";
  return (
    <Page title={`Application ${view.id}`}>
      <h1>
        {view.familyName} application of {view.organization.name}
      </h1>
      {props.notice ? (
        <p class="panel" role="status">
          {props.notice}
        </p>
      ) : null}
      <p>
        Status: <span class={`status ${view.status}`}>{STATUS_LABELS[view.status]}</span>
      </p>
      <Progress view={view} />
      <h2 id="next-heading">What happens next</h2>
      <p>{view.next}</p>
      {props.licenseChanges && props.licenseChanges.length > 0 ? (
        <section class="panel" aria-labelledby="license-change-heading">
          <h2 id="license-change-heading">The license changed</h2>
          {props.licenseChanges.map((change) => (
            <LicenseChange change={change} canAccept={false} />
          ))}
          <p>
            <a href="/account/license">Accept the new version</a> (owners and admins of the organization, signed in).
          </p>
        </section>
      ) : null}
      {view.message ? (
        <section class="panel" aria-labelledby="message-heading">
          <h2 id="message-heading">
            {view.status === "rejected" ? "Reason given by the reviewer" : "Message from the reviewer"}
          </h2>
          <p>{view.message}</p>
        </section>
      ) : null}
      {view.status === "rejected" ? (
        <p id="reapply">
          {view.reapplyAfter ? (
            <>
              You may apply again from <strong>{view.reapplyAfter.slice(0, 10)}</strong> on the{" "}
              <a href={`/apply/${view.family}`}>application form</a>.
            </>
          ) : (
            "This decision is final for this application."
          )}
        </p>
      ) : null}
      {view.reasons.length > 0 && view.status !== "approved" ? (
        <section aria-labelledby="reasons-heading">
          <h2 id="reasons-heading">Why this case {view.status === "rejected" ? "was not approved" : "is reviewed"}</h2>
          <ul>
            {view.reasons.map((r) => (
              <li>{r.detail}</li>
            ))}
          </ul>
        </section>
      ) : null}
      {view.status === "info_requested" ? (
        <form method="post" action={`/v1/applications/${view.id}/response?token=${encodeURIComponent(props.token)}`}>
          <label for="f-message">Your answer</label>
          <textarea id="f-message" name="message" required />
          <button type="submit">Send answer</button>
        </form>
      ) : null}
      {active ? (
        <section aria-labelledby="tokens-heading">
          <h2 id="tokens-heading">Access tokens</h2>
          <p>
            Every developer of your organization creates their own tokens in <a href="/account">your account</a>, signed
            in with a link mailed to them. Invite colleagues there too.
          </p>
        </section>
      ) : null}
      {view.status === "approved" ? <LicenseDuties family={family} /> : null}
      {active ? <DownloadInstructions baseUrl={props.baseUrl ?? ""} family={family} /> : null}
      <h2>Details</h2>
      <dl class="facts">
        <dt>Application</dt>
        <dd>
          <code>{view.id}</code>
        </dd>
        <dt>Submitted</dt>
        <dd>{day(view.submittedAt)}</dd>
        <dt>Last change</dt>
        <dd>{day(view.updatedAt)}</dd>
        {view.grant ? (
          <>
            <dt>Access</dt>
            <dd>{view.grant.status}</dd>
          </>
        ) : null}
      </dl>
      <p class="hint">Keep this page's address private: it is the key to your case.</p>
    </Page>
  );
}

/** Shown after a submission: nothing is decided until the contact confirms the address. */
export function CheckEmailPage(props: { familyName: string; confirmBy: string }) {
  return (
    <Page title="Confirm your e-mail address">
      <h1>Check your e-mail</h1>
      <p role="status">
        We sent a link to the contact address you gave. Open it by {props.confirmBy.slice(0, 16).replace("T", " ")} UTC
        to confirm the address: your {props.familyName} application is decided only then.
      </p>
      <p class="hint">No mail? Look in the spam folder, or apply again: only the newest link matters.</p>
    </Page>
  );
}

/**
 * The page a mailed confirmation link opens. Confirming is the contact's acceptance of the license
 * for the organization, so the page says what is accepted — the organization, the family, the
 * license version, the texts and their hashes — and the button says that pressing it accepts them;
 * the hashes go with the post as the statement of what was accepted. One button: mail scanners
 * fetch links to look at them, and a GET must never use a link up.
 */
export function ConfirmPage(props: { terms: ConfirmationTerms; token: string; action: string; problem?: string }) {
  const { terms } = props;
  const { name, named } = terms.organization;
  const organization = terms.organization.existing
    ? `${name}, the organization you own${named === name ? "" : ` (the application names “${named}”)`}`
    : `${name}, a new organization you will own`;
  return (
    <Page title="Accept the license and confirm your application">
      <h1>Accept the license and confirm your application</h1>
      {props.problem ? (
        <div class="errors" role="alert" tabindex={-1} id="form-errors">
          <p>{props.problem}</p>
        </div>
      ) : null}
      <p>
        Someone applied for access to {terms.familyName} naming <strong>{terms.contactEmail}</strong> as the contact.
        Confirming proves the address, and is your acceptance of the license below on the organization's behalf: the
        application is then decided under the license policy, and you are signed in to the organization's account.
      </p>
      <dl class="facts">
        <dt>Organization</dt>
        <dd>{organization}</dd>
        <dt>Models</dt>
        <dd>
          {terms.familyName}: {terms.models.join(", ")}
        </dd>
        <dt>License</dt>
        <dd>
          {terms.licenseName}, version {terms.licenseVersion} (<a href={terms.licenseUrl}>text</a>)
        </dd>
        <dt>License sha256</dt>
        <dd>
          <code>{terms.licenseSha256}</code>
        </dd>
        <dt>Acceptable Use Policy</dt>
        <dd>
          version {terms.licenseVersion} (<a href={terms.aupUrl}>text</a>)
        </dd>
        <dt>AUP sha256</dt>
        <dd>
          <code>{terms.aupSha256}</code>
        </dd>
      </dl>
      <LicenseTexts
        placeholder={terms.placeholder}
        licenseName={terms.licenseName}
        licenseText={terms.licenseText}
        aupText={terms.aupText}
      />
      <form method="post" action={props.action}>
        <input type="hidden" name="token" value={props.token} />
        <input type="hidden" name="licenseSha256" value={terms.licenseSha256} />
        <input type="hidden" name="aupSha256" value={terms.aupSha256} />
        <p>
          By pressing the button you accept version {terms.licenseVersion} of the {terms.licenseName} and the Acceptable
          Use Policy, with the hashes above, on behalf of {terms.organization.name}, and confirm that you may do so.
        </p>
        <button type="submit">Accept the license and confirm</button>
      </form>
      <p class="hint">
        If you did not apply, or may not accept for this organization, close this page: nothing happens.
      </p>
    </Page>
  );
}

/** A mailed link that is used, expired or unknown. */
export function LinkFailedPage(props: { detail: string; retry: { href: string; label: string } }) {
  return (
    <Page title="This link does not work any more">
      <h1>This link does not work any more</h1>
      <p role="alert">{props.detail}</p>
      <p>
        <a href={props.retry.href}>{props.retry.label}</a>
      </p>
    </Page>
  );
}
