import type { FieldError } from "../errors";
import { Page } from "../pages/layout";
import type { LicenseFamily } from "../policy/types";
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

/** The application form for a license family. */
export function ApplicationForm(props: {
  family: LicenseFamily;
  licenseSha256: string;
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
                <span>{m.displayName}</span>
              </label>
            ))}
            <FieldErrorText errors={errors} field="models" id="f-models-error" />
          </fieldset>
        </fieldset>
        <fieldset>
          <legend>License</legend>
          {props.placeholder ? (
            <p class="hint">
              This deployment shows placeholder text; the operator has not loaded the official license yet.
            </p>
          ) : null}
          <h2 id="license-heading">{family.licenseName}</h2>
          <section class="doc" tabindex={0} aria-labelledby="license-heading">
            {props.licenseText}
          </section>
          <p class="hint">
            sha256 <code>{props.licenseSha256}</code>
          </p>
          <h2 id="aup-heading">Acceptable Use Policy</h2>
          <section class="doc" tabindex={0} aria-labelledby="aup-heading">
            {props.aupText}
          </section>
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

const STATUS_LABELS: Record<ApplicantView["status"], string> = {
  approved: "Approved",
  pending_review: "Pending review",
  info_requested: "Information requested",
  rejected: "Not approved",
};

/** The applicant's status page, opened with the capability link. */
export function StatusPage(props: { view: ApplicantView; token: string; notice?: string }) {
  const { view } = props;
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
      <p>{view.next}</p>
      {view.message ? (
        <section class="panel" aria-labelledby="message-heading">
          <h2 id="message-heading">Message from the reviewer</h2>
          <p>{view.message}</p>
        </section>
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
      <h2>Details</h2>
      <dl class="facts">
        <dt>Application</dt>
        <dd>
          <code>{view.id}</code>
        </dd>
        <dt>Submitted</dt>
        <dd>{view.submittedAt.replace("T", " ").slice(0, 16)} UTC</dd>
        <dt>Last change</dt>
        <dd>{view.updatedAt.replace("T", " ").slice(0, 16)} UTC</dd>
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

/** Shown after a repeat application: the case exists and a fresh link went to its contact. */
export function RepeatApplicationPage(props: { familyName: string }) {
  return (
    <Page title="Application already on file">
      <h1>Your application is already on file</h1>
      <p role="status">
        Your organization already has an open or approved {props.familyName} application with this e-mail address. We
        have e-mailed a fresh link to its status page to that address.
      </p>
    </Page>
  );
}
