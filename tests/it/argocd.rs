//! The Argo CD health checks and resource actions of `deploy/argocd/`, run the way Argo CD runs
//! them — Lua 5.1, `obj` set to the live object, no string library — against the objects usher
//! writes on the real control plane: every phase and reason the integration tests reach, and
//! the two actions applied as Argo CD applies them, with usher reacting.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Client, Resource};
use serde_json::{Value, json};
use usher::crd::{LocationGroup, RoleBinding, SystemUser, Tenant};
use usher_testenv::Smtp;

use crate::support::{
    Usher, apply_yaml, client, eventually, invitation_in, kubectl, namespace, recipient, repo,
    wait_for,
};

/// The scripts as files, in the layout of Argo CD's own `resource_customizations`.
fn scripts_dir() -> PathBuf {
    repo().join("deploy/argocd/usher.dev")
}

/// The usher keys of `argocd-cm` and what Argo CD must read from each, built from the script
/// files: a health key is the script itself; an actions key is YAML with the discovery script
/// and the definitions, compared as parsed.
fn expected_keys() -> BTreeMap<String, Value> {
    let read = |path: &str| {
        let path = scripts_dir().join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let mut keys = BTreeMap::new();
    for kind in ["Tenant", "LocationGroup", "SystemUser", "RoleBinding"] {
        keys.insert(
            format!("resource.customizations.health.usher.dev_{kind}"),
            Value::String(read(&format!("{kind}/health.lua"))),
        );
    }
    for (kind, action) in [
        ("SystemUser", "resend-invitation"),
        ("Tenant", "release-offboarding"),
    ] {
        keys.insert(
            format!("resource.customizations.actions.usher.dev_{kind}"),
            json!({
                "discovery.lua": read(&format!("{kind}/actions/discovery.lua")),
                "definitions": [{
                    "name": action,
                    "action.lua": read(&format!("{kind}/actions/{action}/action.lua")),
                }],
            }),
        );
    }
    keys
}

/// Runs a script of Argo CD's as Argo CD does (util/lua in argo-cd): `obj` is the live object,
/// the libraries are base, table and os.time/os.date only — no string, math or io, and so no
/// string methods either — and what the script returns is taken as JSON. Stricter than Argo
/// CD at most, never looser, so a script that runs here runs there.
const WRAPPER: &str = r#"
local script, object = arg[1], arg[2]
local encode
local function quote(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end
function encode(v)
  local t = type(v)
  if t == "nil" then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if v == math.floor(v) and math.abs(v) < 2^53 then return string.format("%d", v) end
    return string.format("%.17g", v)
  end
  if t == "string" then return quote(v) end
  if t ~= "table" then error("cannot encode a " .. t) end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  local parts = {}
  -- An empty table is an array, as Argo CD's JSON encoder has it.
  if n == #v then
    for i = 1, n do parts[i] = encode(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  for k, item in pairs(v) do
    parts[#parts + 1] = quote(tostring(k)) .. ":" .. encode(item)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end
local env = {
  obj = dofile(object),
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = pcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
  unpack = unpack, rawequal = rawequal, rawget = rawget, rawset = rawset,
  getmetatable = getmetatable, setmetatable = setmetatable, xpcall = xpcall,
  _VERSION = _VERSION,
  table = {concat = table.concat, insert = table.insert, maxn = table.maxn,
           remove = table.remove, sort = table.sort},
  os = {time = os.time, date = os.date},
}
env._G = env
local chunk = assert(loadfile(script))
setfenv(chunk, env)
local strings = getmetatable("")
local methods = strings.__index
strings.__index = nil
local ok, result = pcall(chunk)
strings.__index = methods
if not ok then
  io.stderr:write(tostring(result), "\n")
  os.exit(1)
end
io.write(encode(result))
"#;

/// A Lua 5.1 table constructor for a JSON value, as Argo CD hands objects to its scripts:
/// objects become tables keyed by strings, arrays sequences, null nothing (an absent field).
fn lua_literal(value: &Value) -> String {
    fn string(s: &str, out: &mut String) {
        out.push('"');
        for b in s.bytes() {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                0x20..=0x7e => out.push(b as char),
                // Control characters and the bytes of UTF-8 sequences, byte for byte.
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
        out.push('"');
    }
    fn walk(value: &Value, out: &mut String) {
        match value {
            Value::Null => out.push_str("nil"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::String(s) => string(s, out),
            Value::Array(items) => {
                out.push('{');
                for item in items {
                    walk(item, out);
                    out.push_str(", ");
                }
                out.push('}');
            }
            Value::Object(fields) => {
                out.push('{');
                for (key, item) in fields.iter().filter(|(_, v)| !v.is_null()) {
                    out.push('[');
                    string(key, out);
                    out.push_str("] = ");
                    walk(item, out);
                    out.push_str(", ");
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    walk(value, &mut out);
    out
}

/// Argo CD's repair of what the Lua round trip loses: Lua has one empty table for `{}` and
/// `[]`, the encoder writes `[]`, and Argo CD puts back the live object's empty object there.
fn restore_empty_objects(new: &mut Value, live: &Value) {
    match (new, live) {
        (Value::Object(new), Value::Object(live)) => {
            for (key, value) in new.iter_mut() {
                let Some(before) = live.get(key) else {
                    continue;
                };
                if before.is_object() && value.as_array().is_some_and(Vec::is_empty) {
                    *value = before.clone();
                } else {
                    restore_empty_objects(value, before);
                }
            }
        }
        (Value::Array(new), Value::Array(live)) => {
            for (value, before) in new.iter_mut().zip(live) {
                restore_empty_objects(value, before);
            }
        }
        _ => {}
    }
}

/// The JSON merge patch (RFC 7386) from `live` to `new`, as Argo CD computes it before it
/// patches the object; None when they are equal.
fn merge_patch(live: &Value, new: &Value) -> Option<Value> {
    if live == new {
        return None;
    }
    let (Value::Object(live), Value::Object(new)) = (live, new) else {
        return Some(new.clone());
    };
    let mut patch = serde_json::Map::new();
    for (key, before) in live {
        match new.get(key) {
            None => {
                patch.insert(key.clone(), Value::Null);
            }
            Some(after) => {
                if let Some(p) = merge_patch(before, after) {
                    patch.insert(key.clone(), p);
                }
            }
        }
    }
    for (key, after) in new {
        if !live.contains_key(key) {
            patch.insert(key.clone(), after.clone());
        }
    }
    Some(Value::Object(patch))
}

/// The usher scripts as an Argo CD installation holds them: the keys of its `argocd-cm`.
struct Argo {
    /// Where the wrapper, the script and the object of each run are written.
    dir: PathBuf,
    data: BTreeMap<String, String>,
}

impl Argo {
    /// Install `deploy/argocd/argocd-cm-patch.yaml` into an `argocd-cm` of `ns` that already
    /// holds settings of its own, with the command the README gives, and read the scripts back
    /// from it: what runs below is what Argo CD would read.
    async fn install(client: &Client, ns: &str) -> Self {
        let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), ns);
        let own = BTreeMap::from([
            ("url".to_string(), "https://argocd.example.com".to_string()),
            (
                "resource.customizations.health.cert-manager.io_Certificate".to_string(),
                "hs = {status = \"Healthy\"}\nreturn hs\n".to_string(),
            ),
        ]);
        let mut cm = k8s_openapi::api::core::v1::ConfigMap {
            data: Some(own.clone()),
            ..Default::default()
        };
        cm.meta_mut().name = Some("argocd-cm".into());
        configmaps
            .create(&PostParams::default(), &cm)
            .await
            .expect("argocd-cm created");
        let patch = repo().join("deploy/argocd/argocd-cm-patch.yaml");
        let (ok, out) = kubectl(&[
            "-n",
            ns,
            "patch",
            "configmap",
            "argocd-cm",
            "--type",
            "merge",
            "--patch-file",
            &patch.display().to_string(),
        ]);
        assert!(ok, "kubectl patch: {out}");
        let data = configmaps
            .get("argocd-cm")
            .await
            .expect("argocd-cm")
            .data
            .unwrap_or_default();
        for (key, value) in &own {
            assert_eq!(data.get(key), Some(value), "the patch dropped {key}");
        }
        let dir = usher_testenv::scratch_dir("argocd").expect("scratch dir");
        std::fs::write(dir.join("wrapper.lua"), WRAPPER).expect("wrapper written");
        Self { dir, data }
    }

    /// Run `script` with `obj` set to `object`; what it returns, as JSON.
    fn run(&self, script: &str, object: &Value) -> Value {
        let script_path = self.dir.join("script.lua");
        let object_path = self.dir.join("object.lua");
        std::fs::write(&script_path, script).expect("script written");
        std::fs::write(&object_path, format!("return {}\n", lua_literal(object)))
            .expect("object written");
        let out = std::process::Command::new("lua5.1")
            .arg(self.dir.join("wrapper.lua"))
            .arg(&script_path)
            .arg(&object_path)
            .output()
            .expect("lua5.1 runs (Debian's lua5.1; `make test-peers` installs it)");
        assert!(
            out.status.success(),
            "the script failed on {}: {}",
            name_of(object),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        })
    }

    /// The health Argo CD shows for a live object: (status, message).
    fn health(&self, object: &Value) -> (String, String) {
        let key = format!(
            "resource.customizations.health.usher.dev_{}",
            kind_of(object)
        );
        let script = self.data.get(&key).unwrap_or_else(|| panic!("no {key}"));
        let hs = self.run(script, object);
        let status = hs["status"].as_str().unwrap_or_default().to_string();
        // What Argo CD accepts; anything else it shows as Unknown.
        assert!(
            [
                "Healthy",
                "Progressing",
                "Degraded",
                "Suspended",
                "Missing",
                "Unknown"
            ]
            .contains(&status.as_str()),
            "{}: {hs}",
            name_of(object)
        );
        (
            status,
            hs["message"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// The kind's actions in `argocd-cm`: the discovery script and the definitions.
    fn actions_of(&self, kind: &str) -> Value {
        let key = format!("resource.customizations.actions.usher.dev_{kind}");
        let text = self.data.get(&key).unwrap_or_else(|| panic!("no {key}"));
        serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{key}: {e}"))
    }

    /// The actions Argo CD lists for a live object: name → enabled.
    fn offered(&self, object: &Value) -> BTreeMap<String, bool> {
        let actions = self.actions_of(kind_of(object));
        let listed = self.run(
            actions["discovery.lua"].as_str().expect("discovery.lua"),
            object,
        );
        listed
            .as_object()
            .unwrap_or_else(|| panic!("discovery returned {listed}"))
            .iter()
            .map(|(name, a)| (name.clone(), a["disabled"] != json!(true)))
            .collect()
    }

    /// Whether `action` is listed for the object and enabled.
    fn enabled(&self, object: &Value, action: &str) -> bool {
        let offered = self.offered(object);
        assert_eq!(
            offered.keys().collect::<Vec<_>>(),
            [action],
            "{}",
            name_of(object)
        );
        offered[action]
    }

    /// Run `action` on a live object as Argo CD does: the action's Lua, the empty objects put
    /// back, the merge patch from the live object. The patch is returned, not applied.
    fn action_patch(&self, object: &Value, action: &str) -> Value {
        assert!(
            self.enabled(object, action),
            "{action} is not offered on {}",
            name_of(object)
        );
        let actions = self.actions_of(kind_of(object));
        let definition = actions["definitions"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == action))
            .unwrap_or_else(|| panic!("no definition of {action}"));
        let mut new = self.run(
            definition["action.lua"].as_str().expect("action.lua"),
            object,
        );
        restore_empty_objects(&mut new, object);
        merge_patch(object, &new).unwrap_or_else(|| panic!("{action} changed nothing"))
    }
}

/// The kind of a live object, which picks its scripts.
fn kind_of(object: &Value) -> &str {
    object["kind"].as_str().expect("a kind")
}

/// kind/name, for messages.
fn name_of(object: &Value) -> String {
    format!(
        "{}/{}",
        kind_of(object),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// The API resource of an usher kind, for reading its objects untyped: every field kept.
fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "Tenant" => ApiResource::erase::<Tenant>(&()),
        "LocationGroup" => ApiResource::erase::<LocationGroup>(&()),
        "SystemUser" => ApiResource::erase::<SystemUser>(&()),
        "RoleBinding" => ApiResource::erase::<RoleBinding>(&()),
        _ => panic!("not an usher kind: {kind}"),
    }
}

/// The untyped API of an usher kind in `ns`.
fn dynamic(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &api_resource(kind))
}

/// The live object as the API server returns it, every field kept.
async fn live(client: &Client, ns: &str, kind: &str, name: &str) -> Value {
    let object = dynamic(client, ns, kind)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("{kind}/{name}: {e}"));
    serde_json::to_value(object).expect("JSON")
}

/// The condition of `type_` in a status, if any.
fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The reason of the Ready condition of an object.
fn ready_reason(object: &DynamicObject) -> Option<String> {
    condition(&object.data["status"], "Ready").and_then(|c| c["reason"].as_str().map(Into::into))
}

/// Wait until usher shows `reason` on the Ready condition of an object that describes its
/// current generation, and return the live object.
async fn settled(client: &Client, ns: &str, kind: &str, name: &str, reason: &str) -> Value {
    let api = dynamic(client, ns, kind);
    let object = wait_for(&api, name, reason, |o: &DynamicObject| {
        ready_reason(o).as_deref() == Some(reason)
            && condition(&o.data["status"], "Ready")
                .is_some_and(|c| c["observedGeneration"] == json!(o.metadata.generation))
    })
    .await;
    serde_json::to_value(object).expect("JSON")
}

/// The message of the Ready condition of a live object.
fn ready_message(object: &Value) -> String {
    condition(&object["status"], "Ready")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Assert the health of a live object, with the Ready condition's message.
fn assert_health(argo: &Argo, object: &Value, want: &str) {
    let (status, message) = argo.health(object);
    assert_eq!(
        status,
        want,
        "{} ({message}): {:#}",
        name_of(object),
        object["status"]
    );
    assert_eq!(message, ready_message(object), "{}", name_of(object));
}

/// Run `action` on a live object and assert that its patch sets exactly one annotation, to
/// the time of the run (a new value each time, which is what usher reacts to), and nothing
/// else of the object.
fn run_action(argo: &Argo, object: &Value, action: &str, annotation: &str) -> Value {
    let before = jiff::Timestamp::now().as_second();
    let patch = argo.action_patch(object, action);
    let after = jiff::Timestamp::now().as_second();
    let value = patch["metadata"]["annotations"][annotation]
        .as_str()
        .unwrap_or_else(|| panic!("{action} did not set {annotation}: {patch}"))
        .to_string();
    assert_eq!(
        patch,
        json!({"metadata": {"annotations": {annotation: value}}}),
        "{action} changes more than {annotation}"
    );
    let at: jiff::Timestamp = value
        .parse()
        .unwrap_or_else(|e| panic!("{value:?} is not a UTC time: {e}"));
    assert!(
        (before..=after).contains(&at.as_second()),
        "{value} is not the time of the run"
    );
    patch
}

/// Apply an action's patch to the object as Argo CD does: a JSON merge patch.
async fn apply_patch(client: &Client, ns: &str, object: &Value, patch: &Value) {
    let name = object["metadata"]["name"].as_str().expect("a name");
    dynamic(client, ns, kind_of(object))
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("patching {}: {e}", name_of(object)));
}

/// The mails that went to one address.
fn mails_to(smtp: &Smtp, address: &str) -> Vec<Vec<u8>> {
    smtp.messages()
        .into_iter()
        .filter(|m| recipient(m) == address)
        .collect()
}

/// Every state the other tests reach, in one namespace: what usher shows on the Ready
/// condition of each object once it settles, and the health Argo CD should show for it.
const SETTLED: &[(&str, &str, &str, &str)] = &[
    ("Tenant", "acme", "Reconciled", "Healthy"),
    ("Tenant", "other", "Reconciled", "Healthy"),
    ("LocationGroup", "main", "Reconciled", "Healthy"),
    ("LocationGroup", "west", "Reconciled", "Healthy"),
    ("LocationGroup", "other-top", "Reconciled", "Healthy"),
    ("LocationGroup", "orphan", "ParentNotFound", "Progressing"),
    ("LocationGroup", "leaf", "ParentNotReady", "Progressing"),
    ("LocationGroup", "lost", "TenantNotFound", "Progressing"),
    ("LocationGroup", "cyc-a", "Cycle", "Degraded"),
    ("LocationGroup", "cyc-b", "Cycle", "Degraded"),
    ("LocationGroup", "zdup", "DuplicateLocation", "Degraded"),
    ("LocationGroup", "mixed", "ParentInOtherTenant", "Degraded"),
    ("SystemUser", "ann", "InvitationSent", "Healthy"),
    ("SystemUser", "ben", "InvitationSent", "Healthy"),
    ("SystemUser", "gus", "InvitationSent", "Healthy"),
    ("SystemUser", "cat", "Suspended", "Suspended"),
    ("SystemUser", "fay", "TenantNotFound", "Progressing"),
    ("SystemUser", "dan", "EmailDomainNotAllowed", "Degraded"),
    ("SystemUser", "ann-copy", "DuplicateEmail", "Degraded"),
    ("RoleBinding", "ann-1-technician", "Bound", "Healthy"),
    ("RoleBinding", "ben-west", "Bound", "Healthy"),
    ("RoleBinding", "ben-ended", "BindingExpired", "Suspended"),
    ("RoleBinding", "ben-ghost", "GroupNotFound", "Progressing"),
    ("RoleBinding", "ben-orphan", "GroupNotReady", "Progressing"),
    ("RoleBinding", "nobody-admin", "UserNotFound", "Progressing"),
    (
        "RoleBinding",
        "ann-2-admin",
        "ExclusiveRoleConflict",
        "Degraded",
    ),
    ("RoleBinding", "ben-janitor", "UnknownRole", "Degraded"),
    ("RoleBinding", "ben-other", "GroupInOtherTenant", "Degraded"),
];

/// The manifests behind [`SETTLED`]. Where usher decides by age, then name (exclusive roles,
/// duplicate addresses and locations), the older object also has the first name, so that the
/// outcome does not depend on whether both were created within one second.
const MANIFESTS: &str = r#"
apiVersion: usher.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  displayName: Acme Charging
  invitations: {allowedDomains: [acme.example]}
---
apiVersion: usher.dev/v1alpha1
kind: Tenant
metadata: {name: other}
spec: {displayName: Other}
---
apiVersion: usher.dev/v1alpha1
kind: LocationGroup
metadata: {name: main}
spec: {tenantRef: {name: acme}, displayName: Main, locations: [{id: l1}]}
---
apiVersion: usher.dev/v1alpha1
kind: LocationGroup
metadata: {name: west}
spec: {tenantRef: {name: acme}, displayName: West, parentRef: {name: main}}
---
apiVersion: usher.dev/v1alpha1
kind: LocationGroup
metadata: {name: other-top}
spec: {tenantRef: {name: other}, displayName: Other top}
---
apiVersion: usher.dev/v1alpha1
kind: LocationGroup
metadata: {name: orphan}
spec: {tenantRef: {name: acme}, displayName: Orphan, parentRef: {name: ghost}}
---
apiVersion: usher.dev/v1alpha1
kind: LocationGroup
metadata: {name: leaf}
spec: {tenantRef: {name: acme}, displayName: Leaf, parentRef: {name: orphan}}
---
apiVersion: usher.dev/v1alpha1
kind: LocationGroup
metadata: {name: lost}
spec: {tenantRef: {name: ghost}, displayName: Lost}
---
apiVersion: usher.dev/v1alpha1
kind: LocationGroup
metadata: {name: cyc-a}
spec: {tenantRef: {name: acme}, displayName: A, parentRef: {name: cyc-b}}
---
apiVersion: usher.dev/v1alpha1
kind: LocationGroup
metadata: {name: cyc-b}
spec: {tenantRef: {name: acme}, displayName: B, parentRef: {name: cyc-a}}
---
apiVersion: usher.dev/v1alpha1
kind: LocationGroup
metadata: {name: zdup}
spec: {tenantRef: {name: acme}, displayName: Duplicate, locations: [{id: l1}]}
---
apiVersion: usher.dev/v1alpha1
kind: LocationGroup
metadata: {name: mixed}
spec: {tenantRef: {name: acme}, displayName: Mixed, parentRef: {name: other-top}}
---
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata: {name: ann}
spec: {tenantRef: {name: acme}, email: ann@acme.example, firstName: Ann}
---
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata: {name: ann-copy}
spec: {tenantRef: {name: acme}, email: Ann@acme.example}
---
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata: {name: ben}
spec: {tenantRef: {name: acme}, email: ben@acme.example}
---
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata: {name: cat}
spec: {tenantRef: {name: acme}, email: cat@acme.example, suspended: true}
---
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata: {name: dan}
spec: {tenantRef: {name: acme}, email: dan@evil.example}
---
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata: {name: fay}
spec: {tenantRef: {name: ghost}, email: fay@acme.example}
---
apiVersion: usher.dev/v1alpha1
kind: SystemUser
metadata: {name: gus}
spec: {tenantRef: {name: acme}, email: gus@acme.example}
---
apiVersion: usher.dev/v1alpha1
kind: RoleBinding
metadata: {name: ann-1-technician}
spec: {userRef: {name: ann}, role: Technician}
---
apiVersion: usher.dev/v1alpha1
kind: RoleBinding
metadata: {name: ann-2-admin}
spec: {userRef: {name: ann}, role: Administrator}
---
apiVersion: usher.dev/v1alpha1
kind: RoleBinding
metadata: {name: ben-west}
spec: {userRef: {name: ben}, role: Manager, scope: {locationGroup: west}}
---
apiVersion: usher.dev/v1alpha1
kind: RoleBinding
metadata: {name: ben-ended}
spec: {userRef: {name: ben}, role: CustomerService, expiresAt: "2020-01-01T00:00:00Z"}
---
apiVersion: usher.dev/v1alpha1
kind: RoleBinding
metadata: {name: ben-ghost}
spec: {userRef: {name: ben}, role: Manager, scope: {locationGroup: ghost}}
---
apiVersion: usher.dev/v1alpha1
kind: RoleBinding
metadata: {name: ben-orphan}
spec: {userRef: {name: ben}, role: Manager, scope: {locationGroup: orphan}}
---
apiVersion: usher.dev/v1alpha1
kind: RoleBinding
metadata: {name: nobody-admin}
spec: {userRef: {name: nobody}, role: Administrator}
---
apiVersion: usher.dev/v1alpha1
kind: RoleBinding
metadata: {name: ben-janitor}
spec: {userRef: {name: ben}, role: Janitor}
---
apiVersion: usher.dev/v1alpha1
kind: RoleBinding
metadata: {name: ben-other}
spec: {userRef: {name: ben}, role: Manager, scope: {locationGroup: other-top}}
"#;

/// What people read and what Argo CD installs must not drift apart: the ConfigMap patch holds
/// exactly the script files, and applying it keeps the keys `argocd-cm` already had.
#[tokio::test]
async fn the_argocd_cm_patch_installs_exactly_the_script_files() {
    let client = client().await;
    let ns = namespace(&client, "argocd-cm").await;
    let argo = Argo::install(&client, &ns).await;
    let installed: BTreeMap<&String, Value> = argo
        .data
        .iter()
        .filter(|(key, _)| key.contains("usher.dev"))
        .map(|(key, text)| {
            let read = if key.contains(".actions.") {
                serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{key}: {e}"))
            } else {
                Value::String(text.clone())
            };
            (key, read)
        })
        .collect();
    let expected = expected_keys();
    assert_eq!(
        installed.keys().copied().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, from_files) in &expected {
        assert_eq!(
            &installed[key], from_files,
            "{key} in deploy/argocd/argocd-cm-patch.yaml differs from the files of deploy/argocd/usher.dev/"
        );
    }
}

/// The health of every kind in every state the integration tests reach, read by the
/// installed scripts from the live objects: before usher writes a status, once it settles,
/// while a new spec waits to be observed, while mail is down, once an invitation expires, and
/// after the resend action, which Argo CD offers where usher answers it and which usher
/// answers with a second mail.
#[tokio::test]
async fn health_follows_every_state_of_the_four_kinds_and_resend_sends_a_second_invitation() {
    let client = client().await;
    let ns = namespace(&client, "argocd-health").await;
    let argo = Argo::install(&client, &ns).await;
    let mut smtp = Smtp::start().expect("SMTP sink");
    apply_yaml(&client, &ns, MANIFESTS).await;

    // Before usher runs: an object of any kind without a status is Progressing, and no action
    // is offered.
    for (kind, name, ..) in SETTLED {
        let object = live(&client, &ns, kind, name).await;
        assert!(object["status"].is_null(), "{kind}/{name} has a status");
        let (status, message) = argo.health(&object);
        assert_eq!(
            (status.as_str(), message.as_str()),
            ("Progressing", "waiting for usher to report a status"),
            "{kind}/{name}"
        );
    }
    let gus = live(&client, &ns, "SystemUser", "gus").await;
    assert!(!argo.enabled(&gus, "resend-invitation"));
    let acme = live(&client, &ns, "Tenant", "acme").await;
    assert!(!argo.enabled(&acme, "release-offboarding"));

    let mut usher = Usher::start(&ns, &smtp.url(), &[]).await;
    for (kind, name, reason, health) in SETTLED {
        let object = settled(&client, &ns, kind, name, reason).await;
        assert_health(&argo, &object, health);
    }
    // The resend is offered to the invited, not to the suspended, refused or unplaced.
    for (name, offered) in [
        ("ann", true),
        ("ben", true),
        ("cat", false),
        ("dan", false),
        ("ann-copy", false),
        ("fay", false),
    ] {
        let object = live(&client, &ns, "SystemUser", name).await;
        assert_eq!(
            argo.enabled(&object, "resend-invitation"),
            offered,
            "resend-invitation on {name}"
        );
    }

    // Conditions usher does not write today but kstatus defines: Stalled wins over Ready,
    // Reconciling makes any Ready object Progressing. Added to live objects of each kind.
    for (kind, name) in [
        ("Tenant", "acme"),
        ("LocationGroup", "main"),
        ("SystemUser", "ann"),
        ("RoleBinding", "ann-1-technician"),
    ] {
        let object = live(&client, &ns, kind, name).await;
        for (type_, want) in [("Stalled", "Degraded"), ("Reconciling", "Progressing")] {
            let mut changed = object.clone();
            let generation = changed["metadata"]["generation"].clone();
            changed["status"]["conditions"]
                .as_array_mut()
                .expect("conditions")
                .push(json!({"type": type_, "status": "True", "reason": "Test",
                    "message": format!("{type_} says so"), "observedGeneration": generation}));
            assert_eq!(
                argo.health(&changed),
                (want.to_string(), format!("{type_} says so")),
                "{kind}/{name} with {type_}"
            );
        }
    }

    // Ben accepts: Active is Healthy, and a resend is no longer offered.
    let mail = eventually(Duration::from_secs(30), || async {
        mails_to(&smtp, "ben@acme.example").into_iter().next()
    })
    .await
    .expect("Ben's invitation");
    assert_eq!(usher.redeem(&invitation_in(&mail).1).await.0, 200);
    let ben = settled(&client, &ns, "SystemUser", "ben", "Active").await;
    assert_health(&argo, &ben, "Healthy");
    assert!(!argo.enabled(&ben, "resend-invitation"));

    // usher is down while specs change, the mail server too, and Gus's invitation expires.
    usher.kill();
    smtp.stop();
    let bump = [
        (
            "Tenant",
            "acme",
            json!({"spec": {"contact": {"phone": "+1 555 0100"}}}),
        ),
        (
            "LocationGroup",
            "main",
            json!({"spec": {"displayName": "Main Region"}}),
        ),
        ("SystemUser", "ann", json!({"spec": {"firstName": "Anne"}})),
        (
            "RoleBinding",
            "ben-west",
            json!({"spec": {"expiresAt": "2999-01-01T00:00:00Z"}}),
        ),
    ];
    for (kind, name, patch) in &bump {
        let before = live(&client, &ns, kind, name).await;
        apply_patch(&client, &ns, &before, patch).await;
        let after = live(&client, &ns, kind, name).await;
        let generation = after["metadata"]["generation"]
            .as_i64()
            .expect("generation");
        assert!(generation > before["metadata"]["generation"].as_i64().unwrap());
        let (status, message) = argo.health(&after);
        assert_eq!(status, "Progressing", "{kind}/{name}: {message}");
        assert!(
            message.contains(&format!("generation {generation}")),
            "{kind}/{name}: {message}"
        );
    }
    let at = jiff::Timestamp::now().as_microsecond() - 1_000_000;
    crate::support::sql(
        &usher.db,
        &format!(
            "UPDATE invitations SET expires_us = {at} WHERE used_us IS NULL AND revoked_us IS NULL AND user_id = (SELECT id FROM users WHERE external_id = '{ns}/gus')"
        ),
    );
    apply_yaml(&client, &ns, "apiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {name: hal}\nspec: {tenantRef: {name: acme}, email: hal@acme.example}\n").await;
    usher.restart().await;

    for (kind, name, reason) in [
        ("Tenant", "acme", "Reconciled"),
        ("LocationGroup", "main", "Reconciled"),
        ("SystemUser", "ann", "InvitationSent"),
        ("RoleBinding", "ben-west", "Bound"),
    ] {
        let object = settled(&client, &ns, kind, name, reason).await;
        assert_health(&argo, &object, "Healthy");
    }
    // Mail down: the invitation waits for a retry, which is progress, not a fault.
    let hal = settled(&client, &ns, "SystemUser", "hal", "InvitationNotSent").await;
    assert_health(&argo, &hal, "Progressing");
    assert!(ready_message(&hal).contains("sending mail"), "{hal}");
    let gus = settled(&client, &ns, "SystemUser", "gus", "InvitationExpired").await;
    assert_health(&argo, &gus, "Degraded");
    smtp.resume().expect("SMTP back");
    let hal = settled(&client, &ns, "SystemUser", "hal", "InvitationSent").await;
    assert_health(&argo, &hal, "Healthy");

    // The resend action on the expired person, applied as Argo CD applies it.
    let patch = run_action(
        &argo,
        &gus,
        "resend-invitation",
        "usher.dev/resend-invitation",
    );
    assert_eq!(mails_to(&smtp, "gus@acme.example").len(), 1);
    apply_patch(&client, &ns, &gus, &patch).await;
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    wait_for(&users, "gus", "invited a second time", |u| {
        u.status
            .as_ref()
            .and_then(|s| s.invitation.as_ref())
            .is_some_and(|i| i.attempts == 2 && i.sent_at.is_some())
    })
    .await;
    let second = eventually(Duration::from_secs(30), || async {
        let mails = mails_to(&smtp, "gus@acme.example");
        (mails.len() == 2).then_some(mails)
    })
    .await
    .expect("a second mail to Gus");
    assert_ne!(invitation_in(&second[0]).1, invitation_in(&second[1]).1);
    let gus = settled(&client, &ns, "SystemUser", "gus", "InvitationSent").await;
    assert_health(&argo, &gus, "Healthy");
    assert!(ready_message(&gus).contains("invitation 2"), "{gus}");
}

/// A mass deletion held by the guard turns the Tenant Degraded with the guard's message and
/// offers the release; the release action, applied as Argo CD applies it, lets the held
/// deletion through and the Tenant is Healthy again.
#[tokio::test]
async fn a_throttled_offboarding_is_degraded_and_the_release_action_lifts_it() {
    let client = client().await;
    let ns = namespace(&client, "argocd-release").await;
    let argo = Argo::install(&client, &ns).await;
    let mut yaml = String::from(
        "apiVersion: usher.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  displayName: Acme\n  offboarding: {policy: Deactivate, maxPerHour: 1}\n",
    );
    for name in ["p1", "p2", "p3"] {
        yaml.push_str(&format!("---\napiVersion: usher.dev/v1alpha1\nkind: SystemUser\nmetadata: {{name: {name}}}\nspec: {{tenantRef: {{name: acme}}, email: {name}@acme.example}}\n"));
    }
    apply_yaml(&client, &ns, &yaml).await;
    let mail = usher_testenv::scratch_dir("mail").expect("scratch dir");
    let _usher = Usher::start(&ns, &format!("file://{}", mail.display()), &[]).await;
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    wait_for(&tenants, "acme", "3 pending", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.users.as_ref())
            .is_some_and(|c| c.pending == 3)
    })
    .await;
    let acme = live(&client, &ns, "Tenant", "acme").await;
    assert_health(&argo, &acme, "Healthy");
    assert!(!argo.enabled(&acme, "release-offboarding"));

    // Two deletions, a budget of one an hour: one goes, one is held.
    let users: Api<SystemUser> = Api::namespaced(client.clone(), &ns);
    for name in ["p1", "p2"] {
        users
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    let guard_says = |t: &Tenant| {
        t.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "OffboardingThrottled" && c.status == "True")
                .map(|c| c.message.clone())
        })
    };
    // The first count may still include the deletion that went (it leaves the cache a moment
    // later); the Tenant settles on the one held.
    wait_for(&tenants, "acme", "OffboardingThrottled for one", |t| {
        guard_says(t).is_some_and(|m| m.starts_with("1 deletions wait"))
    })
    .await;
    let acme = live(&client, &ns, "Tenant", "acme").await;
    let guard = condition(&acme["status"], "OffboardingThrottled")
        .and_then(|c| c["message"].as_str())
        .expect("the guard's message")
        .to_string();
    assert_eq!(
        argo.health(&acme),
        ("Degraded".to_string(), guard),
        "the guard shows"
    );
    let left = |list: kube::core::ObjectList<SystemUser>| list.items.len();
    assert_eq!(
        left(users.list(&Default::default()).await.expect("list")),
        2,
        "one deletion held"
    );

    let patch = run_action(
        &argo,
        &acme,
        "release-offboarding",
        "usher.dev/allow-mass-offboarding",
    );
    apply_patch(&client, &ns, &acme, &patch).await;
    eventually(Duration::from_secs(30), || async {
        let list = users.list(&Default::default()).await.ok()?;
        (left(list) == 1).then_some(())
    })
    .await
    .expect("the held deletion goes once released");
    wait_for(&tenants, "acme", "no longer throttled", |t| {
        guard_says(t).is_none()
    })
    .await;
    let acme = live(&client, &ns, "Tenant", "acme").await;
    assert_health(&argo, &acme, "Healthy");
    assert!(!argo.enabled(&acme, "release-offboarding"));
}
