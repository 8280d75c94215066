//! CRI `v1alpha2`, for kubelets before 1.23 (which speak only it): v1 was made as a copy
//! of v1alpha2, with the same messages and field numbers, and v1alpha2 froze after.
//! So each v1alpha2 call is served by the v1 one, its messages carried across in their
//! wire form (fields v1 added since are simply absent for such a kubelet).

use k8s_cri::{v1, v1alpha2};
use prost::Message;
use tonic::{Request, Response, Status};

use super::Service;

/// The same message in the other API version, by its wire form.
fn carry<A: Message, B: Message + Default>(a: &A) -> Result<B, Status> {
    B::decode(a.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("carrying a CRI message between v1alpha2 and v1: {e}")))
}

/// Implements the v1alpha2 service `$alpha` by the v1 service `$v1`.
macro_rules! through_v1 {
    ($alpha:path, $v1:path => $($method:ident($req:ident) -> $resp:ident;)*) => {
        #[tonic::async_trait]
        impl $alpha for Service {
            $(
                async fn $method(&self, req: Request<v1alpha2::$req>) -> Result<Response<v1alpha2::$resp>, Status> {
                    let req: v1::$req = carry(req.get_ref())?;
                    let resp = <Service as $v1>::$method(self, Request::new(req)).await?;
                    Ok(Response::new(carry(resp.get_ref())?))
                }
            )*
        }
    };
}

through_v1! { v1alpha2::runtime_service_server::RuntimeService, v1::runtime_service_server::RuntimeService =>
        version(VersionRequest) -> VersionResponse;
        run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
        stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
        remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
        pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
        list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
        create_container(CreateContainerRequest) -> CreateContainerResponse;
        start_container(StartContainerRequest) -> StartContainerResponse;
        stop_container(StopContainerRequest) -> StopContainerResponse;
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
        list_containers(ListContainersRequest) -> ListContainersResponse;
        container_status(ContainerStatusRequest) -> ContainerStatusResponse;
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
        exec_sync(ExecSyncRequest) -> ExecSyncResponse;
        exec(ExecRequest) -> ExecResponse;
        attach(AttachRequest) -> AttachResponse;
        port_forward(PortForwardRequest) -> PortForwardResponse;
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
        status(StatusRequest) -> StatusResponse;
}

through_v1! { v1alpha2::image_service_server::ImageService, v1::image_service_server::ImageService =>
        list_images(ListImagesRequest) -> ListImagesResponse;
        image_status(ImageStatusRequest) -> ImageStatusResponse;
        pull_image(PullImageRequest) -> PullImageResponse;
        remove_image(RemoveImageRequest) -> RemoveImageResponse;
        image_fs_info(ImageFsInfoRequest) -> ImageFsInfoResponse;
}
