//! Semantic JSON comparison: object key order and number spelling do not
//! matter, every difference is reported with its path (`routes[1].prefix`).

use serde_json::Value;

/// One difference between `want` (the repository) and `have` (live).
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub path: String,
    pub want: Option<Value>,
    pub have: Option<Value>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| match v {
            None => "(absent)".to_string(),
            Some(v) => {
                let s = v.to_string();
                if s.len() > 120 {
                    format!("{}…", s.chars().take(120).collect::<String>())
                } else {
                    s
                }
            }
        };
        write!(
            f,
            "{}: repository {} / live {}",
            if self.path.is_empty() {
                "."
            } else {
                &self.path
            },
            show(&self.want),
            show(&self.have)
        )
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if a == b {
        return true;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Every difference between `want` and `have`.
pub fn diff(want: &Value, have: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    walk("", want, have, &mut out);
    out
}

fn walk(path: &str, want: &Value, have: &Value, out: &mut Vec<Difference>) {
    match (want, have) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    Some(vb) => walk(&join(path, k), va, vb, out),
                    None => out.push(Difference {
                        path: join(path, k),
                        want: Some(va.clone()),
                        have: None,
                    }),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    out.push(Difference {
                        path: join(path, k),
                        want: None,
                        have: Some(vb.clone()),
                    });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let p = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => walk(&p, x, y, out),
                    (x, y) => out.push(Difference {
                        path: p,
                        want: x.cloned(),
                        have: y.cloned(),
                    }),
                }
            }
        }
        (Value::Number(a), Value::Number(b)) if numbers_equal(a, b) => {}
        (a, b) if a == b => {}
        (a, b) => out.push(Difference {
            path: path.to_string(),
            want: Some(a.clone()),
            have: Some(b.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_number_spelling_do_not_matter() {
        let a = json!({"a": 1, "b": [1.0, {"x": true}]});
        let b: Value = serde_json::from_str(r#"{"b": [1, {"x": true}], "a": 1.0}"#).unwrap();
        assert!(diff(&a, &b).is_empty());
    }

    #[test]
    fn differences_name_their_path() {
        let a = json!({"routes": [{"prefix": "/a"}, {"prefix": "/b"}], "dry_run": false});
        let b = json!({"routes": [{"prefix": "/a"}, {"prefix": "/c"}], "extra": 1});
        let d: Vec<String> = diff(&a, &b).iter().map(|d| d.path.clone()).collect();
        assert_eq!(d, ["routes[1].prefix", "dry_run", "extra"]);
    }
}
