//! Autoscaling: the containers of one service started, added and stopped to match the
//! in-flight load the proxy measures. (Being built.)

#![allow(dead_code)]

mod engine;
