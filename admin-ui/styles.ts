/**
 * The console's stylesheet, served as `/admin/assets/console.css`. Colours are chosen for at least
 * 4.5:1 contrast on their backgrounds; focus is a thick amber outline that shows on every control.
 */
export const CONSOLE_STYLES = `
:root{--fg:#1b1f24;--muted:#4a5563;--bg:#fff;--panel:#f5f7fa;--line:#cdd4de;--accent:#0b57d0;--ok:#0f6b2f;--warn:#8a4b00;--bad:#a4161a;color-scheme:light}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
a{color:var(--accent)}
:focus-visible{outline:3px solid #ff9e1b;outline-offset:2px}
.skip{position:absolute;left:-999px;top:0;background:#fff;padding:.5rem;z-index:10}.skip:focus{left:.5rem}
header.console{background:#10243e;color:#fff;display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:center;padding:.6rem 1rem}
header.console .brand{color:#fff;font-weight:700;text-decoration:none}
header.console nav ul{list-style:none;display:flex;flex-wrap:wrap;gap:.25rem 1rem;margin:0;padding:0}
header.console nav a{color:#fff;text-decoration:none;padding:.2rem 0;border-bottom:2px solid transparent}
header.console nav a[aria-current=page]{border-bottom-color:#fff;font-weight:700}
header.console .who{margin-left:auto;font-size:.9rem;display:flex;gap:.75rem;align-items:center;flex-wrap:wrap}
header.console .who form{margin:0}
header.console .who button{background:transparent;border:1px solid #fff;color:#fff;padding:.2rem .6rem;margin:0}
main{max-width:72rem;margin:0 auto;padding:1rem}
h1{font-size:1.5rem;margin:.25rem 0 1rem}h2{font-size:1.15rem;margin:1.75rem 0 .5rem}
table{border-collapse:collapse;width:100%;font-size:.92rem}
caption{text-align:left;font-weight:600;padding:.25rem 0;color:var(--muted)}
th,td{text-align:left;padding:.45rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--panel);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.table-wrap{overflow-x:auto}
.filters{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:flex-end;margin:0 0 1rem}
.filters label{display:flex;flex-direction:column;font-weight:600;font-size:.9rem}
label{font-weight:600}
input[type=text],input[type=search],input[type=email],select,textarea{padding:.45rem .5rem;border:1px solid #6b7685;border-radius:6px;font:inherit;background:#fff;color:var(--fg);max-width:100%}
textarea{width:100%;min-height:5rem}
button,.button{display:inline-block;background:var(--accent);color:#fff;border:0;border-radius:6px;padding:.5rem 1rem;font:inherit;font-weight:600;cursor:pointer;text-decoration:none}
button.danger{background:var(--bad)}button.secondary{background:#fff;color:var(--accent);border:1px solid var(--accent)}
button[disabled]{background:#6b7685;cursor:not-allowed}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:999px;font-weight:700;font-size:.8rem;white-space:nowrap}
.badge.approved,.badge.active,.badge.ok{background:#e3f4e8;color:var(--ok)}
.badge.pending_review,.badge.info_requested,.badge.suspended,.badge.past_due,.badge.unpaid,.badge.incomplete,.badge.retrying{background:#fff3dc;color:var(--warn)}
.badge.rejected,.badge.revoked,.badge.bad,.badge.canceled,.badge.dead,.badge.expired{background:#fde7e8;color:var(--bad)}
.flag{display:inline-block;background:#eef2f7;border:1px solid var(--line);border-radius:4px;padding:0 .35rem;margin:0 .25rem .25rem 0;font-size:.8rem}
.panel{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:.75rem 1rem;margin:1rem 0}
.panel.bad{border-color:var(--bad);background:#fff5f5}.panel.ok{border-color:var(--ok);background:#f2fbf4}
.empty{color:var(--muted);font-style:italic}
.muted{color:var(--muted)}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}dl.facts dt{font-weight:600;color:var(--muted)}dl.facts dd{margin:0;overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(20rem,1fr));gap:0 2rem}
fieldset{border:1px solid var(--line);border-radius:8px;margin:.75rem 0;padding:.5rem 1rem;min-width:0}legend{font-weight:700}
.choice{display:flex;gap:.5rem;align-items:center;font-weight:400;margin:.3rem 0}
.form-row{margin:.6rem 0}.form-row>label{display:block;margin-bottom:.2rem}
.form-error{color:var(--bad);font-weight:600}.form-status{color:var(--ok);font-weight:600}
.comment{border-left:4px solid var(--line);padding:.25rem .75rem;margin:.5rem 0}.comment p{margin:.25rem 0;white-space:pre-wrap}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em;overflow-wrap:anywhere}
.chart{max-width:100%;height:auto;display:block;margin:.5rem 0}
kbd{border:1px solid var(--line);border-radius:3px;padding:0 .25rem;font-size:.85em;background:var(--panel)}
@media (max-width:640px){
 main{padding:.6rem}
 dl.facts{grid-template-columns:1fr}
 table.stack thead{position:absolute;left:-9999px}
 table.stack tr{display:block;border-bottom:2px solid var(--line);padding:.4rem 0}
 table.stack td{display:block;border:0;padding:.1rem 0}
 table.stack td[data-label]::before{content:attr(data-label) ": ";font-weight:600;color:var(--muted)}
 table.stack td.num{text-align:left}
 header.console .who{margin-left:0}
}
`;
