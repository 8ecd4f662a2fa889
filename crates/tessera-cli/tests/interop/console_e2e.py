"""The console in a real browser: Debian's Chromium driven by Playwright for Python.

Signs in three ways (the admin credential, a one-time link, an outside OIDC provider as an admin
and as a viewer), finds a workload and reads its four answers, follows the access graph to a
caller, revokes a workload after a typed confirmation and sees its token request refused, reviews
an overdue grant, runs explain, promotes a shadow policy set; checks that script in workload
purposes, grant reasons and audit fields stays text; refuses CSRF without a token, a viewer's
change, forged sessions and huge parameters; runs axe-core in every page. Screenshots go to the
folder given.

    python3 console_e2e.py CONFIG.json

CONFIG: base, credential, link, oidc_issuer (optional), client_id, client_secret, revoke_id,
caller, service, overdue_from, overdue_to, review_date, evil_id, shots, axe.
Prints one `ok: ...` line per step; exits 1 with the reason on the first failure.
"""

import json
import re
import sys
import urllib.parse

import requests
from playwright.sync_api import sync_playwright

CFG = json.load(open(sys.argv[1]))
BASE = CFG["base"]
AXE = open(CFG["axe"]).read()
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
axe_report = []


def ok(what):
    print("ok:", what, flush=True)


def fail(what):
    print("FAIL:", what, flush=True)
    sys.exit(1)


def check(cond, what):
    if not cond:
        fail(what)


def shot(page, name):
    page.screenshot(path=f"{CFG['shots']}/{name}.png", full_page=True)


def axe(page, name):
    """axe-core run in the page (by the DevTools protocol: the page's CSP allows no other
    script); serious or critical violations fail the test."""
    page.evaluate(AXE)
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    bad = [v for v in result["violations"] if v.get("impact") in ("serious", "critical")]
    axe_report.append({"page": name, "violations": [(v["id"], v["impact"], len(v["nodes"])) for v in result["violations"]]})
    check(not bad, f"axe on {name}: " + "; ".join(f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}" for v in bad))


def pwned(page):
    return page.evaluate("window.__pwned === undefined && document.querySelectorAll('img[src=x], script:not([src])').length === 0")


def goto(page, fragment):
    page.goto(BASE + "/ui/#" + fragment)
    page.wait_for_load_state("networkidle")


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (errors.append("a dialog opened: " + d.message), d.dismiss()))

        # ---- Sign in with the admin credential.
        page.goto(BASE + "/ui/")
        page.wait_for_selector("#credential")
        axe(page, "signin")
        shot(page, "01-signin")
        page.fill("#credential", "tat_wrong")
        page.click("button[type=submit]")
        page.wait_for_selector(".error")
        check("not the admin credential" in page.inner_text(".error"), "a wrong credential is refused")
        page.fill("#credential", CFG["credential"])
        page.click("button[type=submit]")
        page.wait_for_selector("text=Issuance success (M1)")
        check("admin:credential (admin)" in page.inner_text("#who"), "signed in as the admin credential")
        ok("sign in with the admin credential")
        axe(page, "overview")
        shot(page, "02-overview")

        # ---- Find a workload and read its four answers.
        page.click("nav >> text=Workloads")
        page.wait_for_selector("#f-q")
        page.fill("#f-q", "inventory")
        page.click("form[role=search] button[type=submit]")
        # The unfiltered list already shows the service: wait for the search's own answer.
        try:
            page.wait_for_selector("main p.muted:text-is('1 found')", timeout=10_000)
        except Exception:
            fail("the search finds one workload: " + page.inner_text("main")[:300])
        check(page.locator(f"a:text-is('{CFG['service']}')").count() == 1, "the search's one workload is the service")
        axe(page, "workloads")
        shot(page, "03-workloads")
        page.click(f"a:text-is('{CFG['service']}')")
        page.wait_for_selector("#q-owner")
        text = page.inner_text("main")
        for q in ["Who owns it?", "What can it reach, and why?", "Who can reach it?", "How would we revoke it?"]:
            check(q in text, f"the workload page answers {q!r}")
        check("team-warehouse" in text, "the owner is shown")
        reached = page.inner_text("table >> nth=1")
        check(CFG["caller"] in reached and "The order flow checks and reserves stock" in reached,
              "who can reach it, and why")
        check(f"tessera revoke workload {CFG['service']}" in text, "how to revoke it")
        ok("find a workload and read its four answers")
        axe(page, "workload")
        shot(page, "04-workload")

        # ---- Follow the graph to a caller.
        page.click("text=Show in the access graph")
        page.wait_for_selector("svg.graph")
        node = page.locator(f"svg.graph a.graph-node[data-id='{CFG['caller']}']")
        check(node.count() == 1, "the caller is a node of the service's neighbourhood")
        axe(page, "graph")
        shot(page, "05-graph")
        node.click()
        # (wait_for_function would evaluate a string in the page, which its CSP refuses)
        page.wait_for_selector(f"#f-center[value='{CFG['caller']}']")
        page.wait_for_selector(f"svg.graph a.graph-node[data-id='{CFG['service']}']")
        check(page.locator("svg.graph .node.center").count() == 1, "the caller is now the centre")
        ok("follow the graph to a caller")

        # ---- Script in purposes, reasons and audit fields stays text.
        goto(page, "/workload?id=" + urllib.parse.quote(CFG["evil_id"], safe=""))
        page.wait_for_selector("#q-owner")
        check("<script>window.__pwned=1</script>" in page.inner_text("main"), "a purpose with markup is shown as text")
        check(pwned(page), "nothing in a purpose ran or became an element")
        goto(page, "/audit?actor=" + urllib.parse.quote("<script>window.__pwned=1</script>", safe=""))
        page.wait_for_selector("table")
        check(pwned(page), "nothing in an audit field ran")
        goto(page, "/graph?owner=team-evil")
        page.wait_for_selector("svg.graph")
        check(pwned(page), "nothing in the graph ran")
        ok("script in workload purposes, grant reasons and audit fields is shown, never run")

        # ---- Revoke with confirmation, then see the call refused.
        form = {"grant_type": "client_credentials", "audience": CFG["service"]}
        auth = (CFG["client_id"], CFG["client_secret"])
        r = requests.post(BASE + "/token", data=form, auth=auth, timeout=10)
        check(r.status_code == 200, f"before the revocation the client gets a token: {r.status_code} {r.text}")
        goto(page, "/workload?id=" + urllib.parse.quote(CFG["revoke_id"], safe=""))
        page.wait_for_selector("#revoke-confirm")
        button = page.locator("button.danger:text('Revoke this workload')")
        check(button.is_disabled(), "revoking needs the typed confirmation")
        page.fill("#revoke-confirm", CFG["revoke_id"] + "x")
        check(button.is_disabled(), "a wrong confirmation does not arm the button")
        page.fill("#revoke-confirm", CFG["revoke_id"])
        check(button.is_enabled(), "the exact ID arms the button")
        button.click()
        page.wait_for_selector("text=Its tokens and SVIDs are refused from now on")
        shot(page, "06-revoked")
        r = requests.post(BASE + "/token", data=form, auth=auth, timeout=10)
        check(r.status_code in (400, 401) and "error" in r.json(), f"after it the call is refused: {r.status_code} {r.text}")
        ok("revoke with confirmation and see the call refused")

        # ---- Review an overdue grant.
        goto(page, "/reviews")
        page.wait_for_selector("h1:text('Grants to review')")
        row = page.locator("tr", has_text=CFG["overdue_to"])
        check(row.count() >= 1, "the overdue grant is on the review list")
        axe(page, "reviews")
        shot(page, "07-reviews")
        row.first.locator("button:text('Review')").click()
        page.wait_for_selector("dialog[open]")
        page.fill("#review-reason", "still used by the nightly export")
        page.fill("#review-date", CFG["review_date"])
        page.click("dialog button:text('Extend')")
        page.wait_for_selector("#review-change")
        change = page.inner_text("#review-change")
        check(f'+review_by = "{CFG["review_date"]}"' in change.replace("  #", " #").split(" #")[0] or f'review_by = "{CFG["review_date"]}"' in change,
              f"the change to the identity file is shown: {change}")
        check(change.lstrip().startswith("---") and "\n-review_by" in change, f"as a unified diff: {change}")
        shot(page, "08-reviewed")
        page.click("dialog button:text('Close')")
        page.locator("tr", has_text=CFG["overdue_to"]).first.wait_for(state="detached", timeout=10_000)
        check(page.locator("tr", has_text=CFG["overdue_to"]).count() == 0, "the extended grant left the list")
        ok("review an overdue grant")

        # ---- Explain.
        goto(page, "/explain")
        page.fill("#x-from", CFG["caller"])
        page.fill("#x-to", CFG["service"])
        page.fill("#x-scopes", "inventory:admin")
        page.click("button:text('Explain')")
        page.wait_for_selector("#explanation")
        check("Denied" in page.inner_text("#explanation"), "explain says a scope outside the grant is denied")
        page.fill("#x-scopes", "inventory:read")
        page.click("button:text('Explain')")
        page.wait_for_selector("#explanation h2:text('Allowed')")
        check("grant" in page.inner_text("#explanation"), "explain names the grant that allows it")
        axe(page, "explain")
        shot(page, "09-explain")
        ok("run explain")

        # ---- Promote the shadow policy set, after a typed confirmation.
        goto(page, "/policy")
        page.wait_for_selector("text=The shadow diff")
        axe(page, "policy")
        shot(page, "10-policy")
        before = page.inner_text("main")
        active = int(re.search(r"Active: version (\d+)", before).group(1))
        shadow = int(re.search(r"Shadow: version (\d+)", before).group(1))
        promote = page.locator("button:text('Promote')")
        check(promote.is_disabled(), "promoting needs the typed confirmation")
        page.fill("input[placeholder=promote]", "promote")
        promote.click()
        done = page.wait_for_selector("text=/Version \\d+ is now active/")
        version = int(re.search(r"Version (\d+)", done.inner_text()).group(1))
        check(version > active, f"a new active version: {version} after {active} (shadow {shadow})")
        page.wait_for_selector(f"text=Active: version {version}")
        page.wait_for_selector("text=No shadow set is loaded")
        ok("promote a shadow policy set")

        # ---- The other pages, for axe and screenshots.
        for frag, name, wait in [("/expiries", "expiries", "h1"), ("/audit", "audit", "table"), ("/advisor", "advisor", "h1")]:
            goto(page, frag)
            page.wait_for_selector(wait)
            axe(page, name)
            shot(page, "11-" + name)
        ok("expiries, audit trail and advisor pages")

        # ---- CSRF, forged sessions, huge parameters.
        cookies = {c["name"]: c["value"] for c in ctx.cookies()}
        session_cookie = next(v for k, v in cookies.items() if k.startswith("tessera_console") or k.startswith("__Host-"))
        name = next(k for k in cookies if k.startswith("tessera_console") or k.startswith("__Host-"))
        s = requests.Session()
        s.cookies.set(name, session_cookie)
        r = s.post(BASE + "/admin/v1/revoke/workload", json={"id": CFG["caller"]}, timeout=10)
        check(r.status_code == 403 and "CSRF" in r.text, f"a change without the CSRF token is refused: {r.status_code} {r.text}")
        r = s.post(BASE + "/admin/v1/revoke/workload", json={"id": CFG["caller"]}, headers={"X-CSRF-Token": "forged"}, timeout=10)
        check(r.status_code == 403, f"a change with a forged CSRF token is refused: {r.status_code}")
        r = requests.get(BASE + "/admin/v1/overview", cookies={name: "forged" + session_cookie[6:]}, timeout=10)
        check(r.status_code == 401, f"a forged session is refused: {r.status_code}")
        r = s.get(BASE + "/admin/v1/workloads", params={"q": "x" * 200_000}, timeout=10)
        check(400 <= r.status_code < 500, f"a huge query parameter is refused cleanly: {r.status_code}")
        r = s.get(BASE + "/admin/v1/audit/search", params={"subject": "y" * 5000}, timeout=10)
        check(r.status_code == 400, f"a long audit filter is refused: {r.status_code}")
        r = s.get(BASE + "/admin/v1/graph", params={"center": "not a spiffe id"}, timeout=10)
        check(r.status_code == 400, f"a bad graph centre is refused: {r.status_code}")
        ok("CSRF without a token, forged sessions and huge parameters are refused cleanly")

        # ---- Sign out: the session is gone.
        page.click("#who button")
        page.wait_for_selector("#credential")
        r = s.get(BASE + "/admin/v1/overview", timeout=10)
        check(r.status_code == 401, f"a signed-out session is refused: {r.status_code}")
        ok("sign out")

        # ---- A one-time link signs in once.
        page.goto(CFG["link"])
        page.wait_for_selector("text=Issuance success (M1)")
        check("admin:link" in page.inner_text("#who"), "the link signed in")
        page.click("#who button")
        page.wait_for_selector("#credential")
        page.goto(CFG["link"])
        page.wait_for_selector(".error")
        check("unknown, used or expired" in page.inner_text(".error"), "a used link is refused")
        ok("a one-time link signs in once")

        if CFG.get("oidc_issuer"):
            oidc(browser, errors)

        check(not errors, f"no script errors or dialogs: {errors}")
        browser.close()
    json.dump(axe_report, open(f"{CFG['shots']}/axe.json", "w"), indent=1)
    print("all steps passed", flush=True)


def oidc_signin(browser, login):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    asked = []
    page.on("request", lambda r: asked.append(r.url) if r.url.startswith(CFG["oidc_issuer"] + "/auth?") else None)
    page.goto(BASE + "/ui/")
    page.wait_for_selector("#oidc-signin")
    page.click("#oidc-signin")
    # node-oidc-provider's development login and consent pages.
    page.wait_for_selector("input[name=login]")
    check(page.url.startswith(CFG["oidc_issuer"]), f"the browser is at the provider: {page.url}")
    check(asked, "the authorization request was seen")
    q = urllib.parse.parse_qs(urllib.parse.urlparse(asked[0]).query)
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any")
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    if page.locator("button[type=submit]").count() and page.url.startswith(CFG["oidc_issuer"]):
        page.click("button[type=submit]")  # consent
    page.wait_for_url(re.compile(re.escape(BASE) + r"/ui/.*"))
    page.wait_for_load_state("networkidle")
    return ctx, page, q


def oidc(browser, errors):
    # An admin by group.
    ctx, page, _ = oidc_signin(browser, "alice")
    page.wait_for_selector("text=Issuance success (M1)")
    check("oidc:alice (admin)" in page.inner_text("#who"), "alice signed in as an admin")
    ok("sign in with the OIDC provider (admin group)")
    ctx.close()

    # A viewer by group: reads, explains, changes nothing.
    ctx, page, params = oidc_signin(browser, "bob")
    page.wait_for_selector("text=Issuance success (M1)")
    check("oidc:bob (viewer)" in page.inner_text("#who"), "bob signed in as a viewer")
    check(params.get("code_challenge_method") == ["S256"] and params.get("code_challenge"), "the sign-in used PKCE S256")
    goto(page, "/workload?id=" + urllib.parse.quote(CFG["caller"], safe=""))
    page.wait_for_selector("#q-owner")
    check(page.locator("#revoke-confirm").count() == 0, "a viewer is offered no revocation")
    status = page.evaluate("""async (id) => {
        const s = await (await fetch('/ui/session')).json();
        const r = await fetch('/admin/v1/revoke/workload', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf}, body: JSON.stringify({id})});
        const x = await fetch('/admin/v1/explain', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf}, body: JSON.stringify({from: id, to: id})});
        return [r.status, await r.text(), x.status];
    }""", CFG["caller"])
    check(status[0] == 403 and "viewer" in status[1], f"a viewer's revocation is refused: {status}")
    check(status[2] == 200, f"a viewer may explain: {status}")
    shot(page, "12-viewer")
    ok("a viewer reads and explains, and is refused an admin action")
    ctx.close()

    # Someone in neither group.
    ctx, page, _ = oidc_signin(browser, "carol")
    page.wait_for_selector(".error")
    check("none of the groups" in page.inner_text(".error"), "carol, in no group, is refused")
    ok("a person in no console group is refused")
    ctx.close()


if __name__ == "__main__":
    main()
