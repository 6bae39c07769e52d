//! What the router tests share to check a driver's `observe_all` against its `observe`.

use std::collections::BTreeMap;

use canaryd::edge::router::{ObservedAll, RouterError};

/// Service names as `observe_all` takes them.
pub fn services(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// `all` (what one `observe_all` returned) holds exactly the services of `each` (what `observe`
/// returned for each, one call a service), and for each the same weights, or an error of the
/// same kind.
pub fn assert_same(all: &ObservedAll, each: &ObservedAll) {
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        each.keys().collect::<Vec<_>>()
    );
    for (service, one) in each {
        match (&all[service], one) {
            (Ok(all), Ok(one)) => assert_eq!(all, one, "{service}"),
            (Err(all), Err(one)) => assert_eq!(
                std::mem::discriminant(all),
                std::mem::discriminant(one),
                "{service}: {all:?} from observe_all, {one:?} from observe"
            ),
            (all, one) => panic!("{service}: {all:?} from observe_all, {one:?} from observe"),
        }
    }
}

/// Raw weights of blue and green, as a driver reports them.
pub fn blue_green(blue: u32, green: u32) -> BTreeMap<String, u32> {
    BTreeMap::from([("blue".to_string(), blue), ("green".to_string(), green)])
}

/// The percentages `observe_all` read for `service` (HAProxy's raw weights are any multiple).
pub fn shares_of(all: &ObservedAll, service: &str) -> BTreeMap<String, u32> {
    let observed = canaryd::core::model::Observed::weights(weights_of(all, service).clone());
    observed
        .percentages()
        .unwrap_or_default()
        .into_iter()
        .map(|(s, w)| (s, u32::from(w.get())))
        .collect()
}

/// The raw weights `observe_all` read for `service`.
pub fn weights_of<'a>(all: &'a ObservedAll, service: &str) -> &'a BTreeMap<String, u32> {
    match &all[service] {
        Ok(observed) => &observed.backends,
        Err(e) => panic!("{service}: {e}"),
    }
}

/// `observe_all` said the router does not know `service`, naming `what`.
pub fn assert_unknown(all: &ObservedAll, service: &str, what: &str) {
    match &all[service] {
        Err(RouterError::Unknown { what: w, .. }) => assert!(w.contains(what), "{service}: {w}"),
        other => panic!("{service}: expected unknown {what}, got {other:?}"),
    }
}

/// What `$router.observe_all($services)` returns, once checked against one `$router.observe` a
/// service with [`assert_same`]. A macro because each driver is its own type.
macro_rules! observe_all_checked {
    ($router:expr, $services:expr) => {{
        let (router, services) = (&$router, $services);
        let all = router.observe_all(services).await.unwrap();
        let mut each = canaryd::edge::router::ObservedAll::new();
        for service in services {
            each.insert(service.clone(), router.observe(service).await);
        }
        $crate::support::observe::assert_same(&all, &each);
        all
    }};
}
pub(crate) use observe_all_checked;
