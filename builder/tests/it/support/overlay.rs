//! A profile's overlay files as the build renders them, for tests of what
//! a role's image carries.

use nodeforge::plan::Plan;

use super::{read_text, repo_root};

/// The plan of `profile` (a path under the repository).
pub fn plan(profile: &str) -> Plan {
    let path = repo_root().join(profile);
    Plan::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// The source text of the overlay file that lands at `target`.
pub fn source(plan: &Plan, target: &str) -> String {
    let f = plan
        .overlay_files
        .iter()
        .find(|f| f.target == target)
        .unwrap_or_else(|| panic!("{target} is not in {}'s image", plan.profile.name));
    read_text(&f.source)
}

/// The overlay file at `target` rendered with the profile's template
/// context, its `vars` changed by `edit`; a template error comes back
/// with its causes, as the build reports it.
pub fn render(
    plan: &Plan,
    target: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<String, String> {
    let text = source(plan, target);
    let mut ctx = plan.profile.template_context();
    edit(&mut ctx["vars"]);
    let ctx = tera::Context::from_serialize(ctx).unwrap();
    tera::Tera::one_off(&text, &ctx, false).map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        msg
    })
}
