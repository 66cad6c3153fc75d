//! Steps of a Zuul-like client that several of these tests take.

use np_core::{NodeState, RequestState};
use np_testing::TestZk;

/// The state of request `id`.
pub async fn state_of(t: &TestZk, id: &str) -> RequestState {
    t.zk.get_request(id).await.unwrap().unwrap().0.state
}

/// Zuul is done with request `id`: every node it was given is marked
/// `used`, and the request is deleted.
pub async fn return_request(t: &TestZk, id: &str) {
    let (request, _) = t.zk.get_request(id).await.unwrap().unwrap();
    for node_id in &request.nodes {
        let (mut node, _) = t.zk.get_node(node_id).await.unwrap().unwrap();
        node.set_state(NodeState::Used);
        t.zk.update_node(&node).await.unwrap();
    }
    t.zk.delete_request(id).await.unwrap();
}
