resource "aws_service_discovery_private_dns_namespace" "ns" {
  name = "demo.local"
  vpc  = "vpc-1"
}
resource "aws_service_discovery_service" "svc" {
  name = "colorteller"
}
resource "aws_appmesh_mesh" "m" {
  name = "m"
}
resource "aws_appmesh_virtual_node" "n" {
  name      = "n"
  mesh_name = aws_appmesh_mesh.m.name
  spec {
    listener {
      port_mapping {
        port     = 80
        protocol = "http"
      }
    }
    service_discovery {
      aws_cloud_map {
        namespace_name = aws_service_discovery_private_dns_namespace.ns.name
        service_name   = aws_service_discovery_service.svc.name
      }
    }
  }
}
