//! The provider's HTML: the login form, the error page, the signed-out page.
//! Every reflected value goes through [`escape`].

use super::provider::{AuthRequest, CLIENT_NAME};

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;\
font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;background:#eef1f6;color:#1d2330}\
main{width:100%;max-width:380px;background:#fff;border-radius:12px;padding:32px;\
box-shadow:0 6px 24px rgba(20,30,60,.12)}\
h1{font-size:1.3rem;margin:0 0 4px}\
.demo{display:inline-block;margin:0 0 20px;padding:2px 8px;border-radius:4px;\
background:#fff3cd;color:#7a5b00;font-size:.8rem;font-weight:600;letter-spacing:.03em}\
.client{margin:0 0 20px;color:#4a5366}\
label{display:block;margin:12px 0 4px;font-weight:600;font-size:.9rem}\
input[type=text],input[type=password]{width:100%;padding:10px 12px;border:1px solid #c5ccd8;\
border-radius:6px;font-size:1rem}\
input:focus{outline:2px solid #3b6fd8;border-color:#3b6fd8}\
button{margin-top:20px;width:100%;padding:11px;border:0;border-radius:6px;background:#3b6fd8;\
color:#fff;font-size:1rem;font-weight:600;cursor:pointer}\
button:hover{background:#2d5bbd}\
.error{margin:0 0 12px;padding:10px 12px;border-radius:6px;background:#fde8e8;color:#9b1c1c}\
.hint{margin:20px 0 0;color:#6b7385;font-size:.8rem}\
code{font-size:.85em}";

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n",
        title = escape(title),
    )
}

/// The login form for a validated request; `error` is shown above it and
/// `username` refilled after a failed attempt.
pub fn login(req: &AuthRequest, error: Option<&str>, username: &str) -> String {
    let mut body = String::new();
    body.push_str("<h1>Demo identity provider — sign in</h1>\n");
    body.push_str(
        "<p class=\"demo\">DEMO ONLY — never use these accounts or this provider in production</p>\n",
    );
    body.push_str(&format!(
        "<p class=\"client\">to continue to <strong>{}</strong> (<code>{}</code>)</p>\n",
        escape(CLIENT_NAME),
        escape(&req.client_id),
    ));
    if let Some(error) = error {
        body.push_str(&format!(
            "<p class=\"error\" role=\"alert\">{}</p>\n",
            escape(error)
        ));
    }
    body.push_str("<form method=\"post\" action=\"/authorize\">\n");
    for (name, value) in req.hidden_fields() {
        body.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
            escape(name),
            escape(value)
        ));
    }
    body.push_str(&format!(
        "<label for=\"username\">Username</label>\n\
<input type=\"text\" id=\"username\" name=\"username\" value=\"{}\" autocomplete=\"username\" autofocus required>\n\
<label for=\"password\">Password</label>\n\
<input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\n\
<button type=\"submit\">Sign in</button>\n</form>\n\
<p class=\"hint\">Demo users: <code>alice</code> / <code>alice-password</code> (tools-admin), \
<code>bob</code> / <code>bob-password</code>.</p>\n",
        escape(username)
    ));
    document("Demo identity provider — sign in", &body)
}

/// The page for a request that cannot go back to its client.
pub fn error(message: &str) -> String {
    let body = format!(
        "<h1>Sign-in request refused</h1>\n<p class=\"demo\">DEMO ONLY</p>\n\
<p class=\"error\">{}</p>\n<p class=\"hint\">The application that sent you here is not \
registered with this provider, or sent a redirect address it did not register. You were \
not redirected.</p>\n",
        escape(message)
    );
    document("Demo identity provider — error", &body)
}

/// The page of a logout that does not redirect.
pub fn signed_out() -> String {
    document(
        "Demo identity provider — signed out",
        "<h1>You are signed out</h1>\n<p class=\"demo\">DEMO ONLY</p>\n\
<p class=\"client\">You can close this window.</p>\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_five_characters() {
        assert_eq!(
            escape(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#x27;y&#x27;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(escape("plain é"), "plain é");
    }

    #[test]
    fn login_page_escapes_every_reflected_value() {
        let req = AuthRequest {
            client_id: "internal-gateway".into(),
            redirect_uri: "https://localhost:10444/oauth2/callback".into(),
            scope: "openid".into(),
            state: Some("\"><script>alert(1)</script>".into()),
            nonce: Some("n'<x>".into()),
            code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        };
        let html = login(&req, Some("<b>bad</b>"), "\"><img src=x>");
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<b>bad"));
        assert!(html
            .contains("name=\"state\" value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""));
        assert!(html.contains("name=\"nonce\" value=\"n&#x27;&lt;x&gt;\""));
        assert!(html.contains("<form method=\"post\" action=\"/authorize\">"));
        assert!(html.contains("name=\"username\""));
        assert!(html.contains("name=\"password\""));
        assert!(html.contains("Demo identity provider — sign in"));
        let err = error("unknown client `<x>`");
        assert!(err.contains("unknown client `&lt;x&gt;`"));
    }
}
