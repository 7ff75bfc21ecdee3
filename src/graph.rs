//! The one graph model of a pipeline, checked once.
//!
//! Both the builder ([`Pipeline::validate`](crate::Pipeline::validate)) and
//! the pipeline file check ([`Registry::check`](crate::config::Registry::check))
//! describe their stages as [`Node`]s — id, the events taken and emitted,
//! the producers subscribed to — and ask [`problems`] what is wrong with the
//! graph: duplicate ids, roles (a producer subscribing, a consumer with a
//! dispatcher, a producer with workers), subscriptions to stages that do
//! not exist or emit nothing, event types that do not match, producers
//! nobody subscribes to, and cycles. Problems come back as data; each layer
//! words them its own way (the builder by stage id, the config layer at the
//! file, line and column of the key concerned, with did-you-mean hints).

use std::any::TypeId;
use std::collections::HashMap;

/// The Rust type of events on one side of a stage, with a readable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// Compared to type-check subscriptions.
    pub id: TypeId,
    /// Shown in errors.
    pub name: &'static str,
}

/// One stage as the graph sees it.
#[derive(Debug, Clone)]
pub(crate) struct Node<'a> {
    /// Its id.
    pub id: &'a str,
    /// What it takes and emits (`None` on the side a producer or a consumer
    /// lacks), or `None` when unknown (a file's stage of an unknown kind:
    /// only its id and edges are checked).
    pub types: Option<(Option<EventType>, Option<EventType>)>,
    /// The ids of the producers it subscribes to, in order.
    pub subscriptions: Vec<&'a str>,
    /// Whether it sets a dispatcher.
    pub dispatcher: bool,
    /// Whether it runs as a worker pool.
    pub workers: bool,
    /// Whether subscribers may join at run time, so no subscriber in the graph is fine.
    pub open: bool,
}

impl Node<'_> {
    fn input(&self) -> Option<Option<EventType>> {
        self.types.map(|(input, _)| input)
    }

    fn output(&self) -> Option<Option<EventType>> {
        self.types.map(|(_, output)| output)
    }
}

/// What is wrong with a graph; `node` and `subscription` index the nodes
/// and a node's subscriptions as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// An earlier node has the same id.
    DuplicateId { node: usize },
    /// A producer (takes nothing) subscribes.
    ProducerSubscribes { node: usize, subscription: usize },
    /// A producer runs as a worker pool.
    ProducerWorkers { node: usize },
    /// A consumer (emits nothing) sets a dispatcher.
    ConsumerDispatcher { node: usize },
    /// A subscription names no node.
    UnknownProducer { node: usize, subscription: usize },
    /// A subscription names a consumer.
    SubscribesToConsumer { node: usize, subscription: usize, producer: usize },
    /// A subscription's producer emits other events than the node takes.
    TypeMismatch { node: usize, subscription: usize, producer: usize, takes: EventType, emits: EventType },
    /// A node emits events, nobody subscribes and none may join later.
    Dangling { node: usize },
    /// The nodes form a cycle: each one's events flow to the next, the last is the first again.
    Cycle { nodes: Vec<usize> },
}

/// Every problem of the graph of `nodes`, node by node, then dangling producers, then the first cycle.
pub(crate) fn problems(nodes: &[Node<'_>]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (node, stage) in nodes.iter().enumerate() {
        if index.contains_key(stage.id) {
            problems.push(Problem::DuplicateId { node });
        } else {
            index.insert(stage.id, node);
        }
    }
    let mut subscribed = vec![false; nodes.len()];
    for (node, stage) in nodes.iter().enumerate() {
        match stage.types {
            Some((None, _)) if !stage.subscriptions.is_empty() => {
                problems.extend(
                    (0..stage.subscriptions.len())
                        .map(|subscription| Problem::ProducerSubscribes { node, subscription }),
                );
            }
            _ => {}
        }
        if stage.input() == Some(None) && stage.workers {
            problems.push(Problem::ProducerWorkers { node });
        }
        if stage.output() == Some(None) && stage.dispatcher {
            problems.push(Problem::ConsumerDispatcher { node });
        }
        for (subscription, producer_id) in stage.subscriptions.iter().enumerate() {
            let Some(&producer) = index.get(producer_id) else {
                problems.push(Problem::UnknownProducer { node, subscription });
                continue;
            };
            subscribed[producer] = true;
            match (nodes[producer].output(), stage.input()) {
                (Some(None), _) => {
                    problems.push(Problem::SubscribesToConsumer { node, subscription, producer })
                }
                (Some(Some(emits)), Some(Some(takes))) if emits.id != takes.id => {
                    problems.push(Problem::TypeMismatch { node, subscription, producer, takes, emits })
                }
                _ => {}
            }
        }
    }
    for (node, stage) in nodes.iter().enumerate() {
        if matches!(stage.output(), Some(Some(_))) && !subscribed[node] && !stage.open {
            problems.push(Problem::Dangling { node });
        }
    }
    let upstreams =
        |node: usize| nodes[node].subscriptions.iter().filter_map(|id| index.get(id).copied()).collect();
    if let Some(cycle) = find_cycle(nodes.len(), &upstreams) {
        problems.push(Problem::Cycle { nodes: cycle });
    }
    problems
}

/// The ids along a cycle, joined by arrows: `a -> b -> a`.
pub(crate) fn cycle_text(nodes: &[Node<'_>], cycle: &[usize]) -> String {
    cycle.iter().map(|&node| nodes[node].id).collect::<Vec<_>>().join(" -> ")
}

/// The first cycle among `count` nodes, along the data flow, closing on its first node.
///
/// `upstreams(i)` lists the nodes node `i` subscribes to.
fn find_cycle(count: usize, upstreams: &dyn Fn(usize) -> Vec<usize>) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Closed,
    }
    fn visit(
        node: usize,
        upstreams: &dyn Fn(usize) -> Vec<usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[node] = Mark::Open;
        path.push(node);
        for next in upstreams(node) {
            if marks[next] == Mark::Open {
                let start = path.iter().position(|&n| n == next).unwrap_or(0);
                // Each node on the path subscribes to the next one, so data flows backwards along it.
                let mut cycle: Vec<usize> = path[start..].iter().rev().copied().collect();
                cycle.push(cycle[0]);
                return Some(cycle);
            }
            if marks[next] == Mark::New
                && let Some(cycle) = visit(next, upstreams, marks, path)
            {
                return Some(cycle);
            }
        }
        path.pop();
        marks[node] = Mark::Closed;
        None
    }
    let mut marks = vec![Mark::New; count];
    for node in 0..count {
        if marks[node] == Mark::New
            && let Some(cycle) = visit(node, upstreams, &mut marks, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events<T: 'static>(name: &'static str) -> Option<EventType> {
        Some(EventType { id: TypeId::of::<T>(), name })
    }

    fn node<'a>(
        id: &'a str,
        types: (Option<EventType>, Option<EventType>),
        subscriptions: &[&'a str],
    ) -> Node<'a> {
        Node {
            id,
            types: Some(types),
            subscriptions: subscriptions.to_vec(),
            dispatcher: false,
            workers: false,
            open: false,
        }
    }

    #[test]
    fn a_sound_chain_has_no_problems() {
        let nodes = [
            node("numbers", (None, events::<u64>("u64")), &[]),
            node("double", (events::<u64>("u64"), events::<u64>("u64")), &["numbers"]),
            node("sum", (events::<u64>("u64"), None), &["double"]),
        ];
        assert_eq!(problems(&nodes), vec![]);
    }

    #[test]
    fn finds_the_cycle_in_flow_order() {
        // a subscribes to source and b; b subscribes to a.
        let nodes = [
            node("source", (None, events::<u64>("u64")), &[]),
            node("a", (events::<u64>("u64"), events::<u64>("u64")), &["source", "b"]),
            node("b", (events::<u64>("u64"), events::<u64>("u64")), &["a"]),
            node("sink", (events::<u64>("u64"), None), &["a"]),
        ];
        let found = problems(&nodes);
        assert_eq!(found, vec![Problem::Cycle { nodes: vec![2, 1, 2] }]);
        assert_eq!(cycle_text(&nodes, &[2, 1, 2]), "b -> a -> b");
    }

    #[test]
    fn every_kind_of_problem_is_named_with_its_node_and_subscription() {
        let text = events::<String>("text");
        let mut pooled = node("pooled", (None, text), &["numbers"]);
        pooled.workers = true;
        let mut consumer = node("print", (text, None), &["numbers", "nowhere", "pooled"]);
        consumer.dispatcher = true;
        let nodes = [
            node("numbers", (None, events::<u64>("u64")), &[]),
            node("numbers", (None, events::<u64>("u64")), &[]),
            pooled,
            consumer,
            node("words", (text, None), &["print"]),
        ];
        let found = problems(&nodes);
        assert_eq!(
            found,
            vec![
                Problem::DuplicateId { node: 1 },
                Problem::ProducerSubscribes { node: 2, subscription: 0 },
                Problem::ProducerWorkers { node: 2 },
                Problem::ConsumerDispatcher { node: 3 },
                Problem::TypeMismatch {
                    node: 3,
                    subscription: 0,
                    producer: 0,
                    takes: text.unwrap(),
                    emits: events::<u64>("u64").unwrap()
                },
                Problem::UnknownProducer { node: 3, subscription: 1 },
                Problem::SubscribesToConsumer { node: 4, subscription: 0, producer: 3 },
                // Subscriptions name the first stage of an id: the duplicate has no subscriber.
                Problem::Dangling { node: 1 },
            ]
        );
    }

    #[test]
    fn a_producer_nobody_subscribes_to_dangles_unless_open_and_unknown_kinds_are_not_typed() {
        let mut nodes = vec![node("numbers", (None, events::<u64>("u64")), &[])];
        assert_eq!(problems(&nodes), vec![Problem::Dangling { node: 0 }]);
        nodes[0].open = true;
        assert_eq!(problems(&nodes), vec![]);
        nodes.push(Node { types: None, ..node("mystery", (None, None), &["numbers"]) });
        nodes.push(node("sum", (events::<u64>("u64"), None), &["mystery"]));
        assert_eq!(problems(&nodes), vec![], "nothing is known of what 'mystery' takes or emits");
    }
}
