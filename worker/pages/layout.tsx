import type { Child } from "hono/jsx";

const STYLES = `
:root{--fg:#1b1f24;--muted:#4a5563;--bg:#fff;--panel:#f5f7fa;--line:#cdd4de;--accent:#0b57d0;--ok:#0f6b2f;--warn:#8a4b00;--bad:#a4161a;color-scheme:light}
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header.site{background:#10243e;color:#fff;padding:.75rem 1rem}header.site a{color:#fff;text-decoration:none;font-weight:600}
main{max-width:46rem;margin:0 auto;padding:1rem}h1{font-size:1.6rem;margin:.5rem 0 1rem}h2{font-size:1.2rem;margin-top:1.75rem}
a{color:var(--accent)}:focus-visible{outline:3px solid #ff9e1b;outline-offset:2px}
label{display:block;font-weight:600;margin-top:1rem}.hint{color:var(--muted);font-size:.9rem;margin:.2rem 0 .4rem}
input[type=text],input[type=email],input[type=url],input[type=number],select,textarea{width:100%;padding:.55rem .6rem;border:1px solid #6b7685;border-radius:6px;font:inherit;background:#fff;color:var(--fg)}
textarea{min-height:7rem}fieldset{border:1px solid var(--line);border-radius:8px;margin:1.25rem 0;padding:.5rem 1rem 1rem;min-width:0}legend{font-weight:700;padding:0 .25rem}
.check{display:flex;gap:.6rem;align-items:flex-start;margin-top:1rem;font-weight:400}.check input{margin-top:.3rem;width:1.1rem;height:1.1rem}
.doc{max-height:16rem;overflow:auto;background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:.75rem;white-space:pre-wrap;font-size:.85rem}
button,.button{display:inline-block;background:var(--accent);color:#fff;border:0;border-radius:6px;padding:.65rem 1.2rem;font:inherit;font-weight:600;cursor:pointer;margin-top:1.25rem;text-decoration:none}
.errors{border:2px solid var(--bad);border-radius:8px;padding:.5rem 1rem;background:#fff5f5}.field-error{color:var(--bad);font-size:.9rem;margin:.25rem 0 0}
.status{display:inline-block;padding:.2rem .6rem;border-radius:999px;font-weight:700;font-size:.9rem}
.status.approved{background:#e3f4e8;color:var(--ok)}.status.pending_review,.status.info_requested{background:#fff3dc;color:var(--warn)}.status.rejected{background:#fde7e8;color:var(--bad)}
.panel{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:.75rem 1rem;margin:1rem 0}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}dl.facts dt{font-weight:600;color:var(--muted)}dl.facts dd{margin:0}
code{font-size:.9em;word-break:break-all}
pre.doc code{word-break:normal;white-space:pre-wrap}
.visually-hidden{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
ol.progress{list-style:none;display:flex;gap:.5rem;padding:0;margin:1rem 0;flex-wrap:wrap}
ol.progress li{flex:1 1 8rem;border-top:4px solid var(--line);padding:.4rem .2rem 0;display:flex;flex-direction:column;font-size:.9rem}
ol.progress li.done{border-top-color:var(--ok)}ol.progress li.current{border-top-color:var(--accent)}
ol.progress li span{color:var(--muted)}
table{border-collapse:collapse;width:100%;font-size:.92rem;margin:.5rem 0}caption{text-align:left;font-weight:600;color:var(--muted)}
th,td{text-align:left;padding:.4rem .4rem;border-bottom:1px solid var(--line);vertical-align:top}
button.danger{background:var(--bad)}button.small{margin:0;padding:.3rem .7rem;font-size:.9rem}
.secret{border:2px solid var(--ok);background:#f2fbf4}.secret code{font-size:1rem}
#mint-status:empty{display:none}
@media (max-width:480px){main{padding:.75rem}dl.facts{grid-template-columns:1fr}
#token-list thead{position:absolute;left:-9999px}#token-list tr{display:block;border-bottom:1px solid var(--line);padding:.3rem 0}#token-list td{display:block;border:0;padding:.1rem 0}}
`;

/** The page shell shared by the applicant-facing pages. */
export function Page(props: {
  title: string;
  children: Child;
  /** A same-origin script the page needs (only pages with interactions have one). */
  script?: string | undefined;
}) {
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="referrer" content="no-referrer" />
        <title>{props.title} · modelgate</title>
        {/* Static CSS: inserted raw so that quotes in font names are not entity-escaped. */}
        <style dangerouslySetInnerHTML={{ __html: STYLES }} />
        {props.script ? <script src={props.script} defer /> : null}
      </head>
      <body>
        <header class="site">
          <a href="/">modelgate</a>
        </header>
        <main id="main">{props.children}</main>
      </body>
    </html>
  );
}
